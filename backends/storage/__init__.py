"""The storage host and its wire protocol."""
