"""The loop: the engine, the stream reader, sinks, deliveries and the dead letter."""
