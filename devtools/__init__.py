"""Development tools: the demo, its seed data and embedded cloud, and every benchmark.

- ``demo``: ``kiosk demo``, the whole product on simulated camera and pins;
- ``demo_cloud``: the reference cloud embedded in the demo, seeded from the demo's members;
- ``seed``: the demo's members, plans and cards;
- ``decodefiles``: ``kiosk decode``, decoding image and video files;
- ``bench``: ``kiosk bench`` and its parts (decoders, the door loop, sync, the owner page).

May import anything of ours. Nothing else imports it but the command line, lazily, so the door never
loads it. The demo's embedded cloud needs the ``cloud`` extra.
"""
