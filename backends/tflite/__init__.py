"""The .tflite writers: offline-planned model, rewrite with the custom ops, tail
prediction, shim header."""
