"""The door's pure core: what a member is, what a code is, and whether the door opens.

- ``model``: the data every part shares (members, memberships, check-ins, reasons, decisions);
- ``policy``: the access decision, a pure function of the member's facts, the site and the time;
- ``occupancy``: who is inside by a door's movements, and when the count starts again;
- ``debounce``: one entry per presented card, however many frames see it;
- ``clock``: the door's effective time and how far it can be trusted (anchors, floors, quality);
- ``ids``: UUIDv7 ids and the boot id.

May import: the standard library and ``sync`` (the shared contract). Never SQL, HTTP, GPIO or a
camera: everything here runs in a unit test without a database or a device.
"""
