"""GPIO outputs through gpiozero: the turnstile relay, the LEDs and the buzzer.

- ``pins``: choosing a pin factory (real pins on a Pi, ``MockFactory`` elsewhere) and pin names;
- ``relay``: the relay that releases the turnstile (pulses, never held open by a crash);
- ``signal``: the LEDs and buzzer patterns members see and hear.
"""
