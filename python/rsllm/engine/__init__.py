"""The engine: the loop around the Rust core, and the model runner."""
