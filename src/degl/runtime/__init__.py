"""Where stages execute: processes, ranks, devices, transports and replay buffers."""
