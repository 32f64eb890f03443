"""The C runtime: sources, the generated glue, and ctypes builds of the kernels."""
