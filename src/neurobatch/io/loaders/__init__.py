"""One loader module per input format, all returning the same Dataset shapes."""
