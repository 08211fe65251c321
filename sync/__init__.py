"""The sync protocol between the kiosk and the cloud (DESIGN §8): message shapes, the device's sync
agent (``kiosk sync``) and the reference cloud service.

Nothing here yet: the scanner never touches the network, and the journal it writes (every row
``pending``, ids are UUIDv7 idempotency keys, a gap-free per-device ``seq``) is what the agent will
upload exactly once. See the sync issue for the protocol's delivery.
"""
