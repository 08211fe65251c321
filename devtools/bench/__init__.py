"""``kiosk bench``: figures as medians and ratios against a baseline measured in the same run.

- ``run``: the command and the shared report helpers;
- ``decode``: the decoders and the production pipeline on generated frames;
- ``loop``: scan-to-relay latency, idle cost and memory of a real door loop (a child process);
- ``sync`` and ``sync_child``: sync against the reference cloud;
- ``web``: the owner page on loopback.
"""
