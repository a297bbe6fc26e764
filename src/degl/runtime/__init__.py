"""Where stages execute: processes, ranks, devices and the transports between them (the replay buffers
they fill are in ``degl.core.replay_buffer``)."""
