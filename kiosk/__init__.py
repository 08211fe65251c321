"""FitFlow Kiosk: the check-in appliance for a gym's door (everything that runs on the Pi).

The door process (``kiosk run``) reads QR codes, decides locally against the replicated member
table, writes the decision to a durable journal and only then pulses the turnstile relay. The sync
agent (``kiosk sync``) and the owner's page (``kiosk web``) are processes of their own.

Packages, from the bottom up (docs/architecture.md explains each boundary):

- ``core``: pure rules and data (model, policy, debounce, clock, ids);
- ``config``: the strict TOML configuration; ``data``: the device's databases and files;
- ``door``: the door loop and the parts it is built from; ``sync``: the device's sync agent;
- ``ops``: the installer's and owner's tools; ``web``: the owner's page;
- ``cli``: the ``kiosk`` command line, the only place that wires everything together.

A package may import only those below it (``door`` and ``sync`` not each other, ``config`` and
``data`` not each other), the top-level ``sync`` package (the contract shared with the cloud) and,
where it drives devices, ``hardware``. Never ``cloud`` or ``devtools``, which only ``cli`` loads. The
import contracts in pyproject.toml enforce this.
"""

__version__ = "0.1.0"
