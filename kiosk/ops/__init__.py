"""The installer's and the owner's tools on the device.

- ``provision``: enrolment, owner password, door and relay settings (``kiosk provision``);
- ``selftest``: graded checks with fix hints (``kiosk selftest``);
- ``status``: one screen of the device's state (``kiosk status``);
- ``backup``: online backup, restore and checks of the database (``kiosk db``);
- ``logs``: the services' logs from journald (``kiosk logs``);
- ``testcard``: a printable test card (``kiosk testcard``);
- ``owner_password``: the owner page's password hash;

May import: anything of ``kiosk`` below the command line, ``hardware`` and ``sync``.
"""
