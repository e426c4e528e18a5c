"""Pure per-record logic: expressions, transform steps, routing and the processor."""
