"""Real TFLM: the custom-op build against a user's tree, the interpreter, isolation."""
