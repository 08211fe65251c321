"""FitFlow Kiosk: the check-in appliance for a gym's door.

The scanner process (``kiosk run``) reads QR codes, decides locally against the replicated member
table, writes the decision to a durable journal and only then pulses the turnstile relay.
"""

__version__ = "0.1.0"
