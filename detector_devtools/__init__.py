"""Developer tools, not part of the daemon: the synthetic fleet, an embedded broker, launch
helpers and the replay tool (``detector synth`` and ``detector replay`` use them)."""
