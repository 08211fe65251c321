"""GPIO through gpiozero: the turnstile relay, the LEDs and the buzzer (outputs), and the
turnstile's passage contacts (inputs).

- ``backends``: the pin backends by their ``gpio.pin_factory`` names, and choosing one
  (``make_pin_factory``);
- ``pins``: each pin backend (lgpio, RPi.GPIO, mock), the board facts that decide which can work,
  and ``GpioError``;
- ``relay``: the relay that releases the turnstile (pulses, never held open by a crash);
- ``signal``: the LEDs and buzzer patterns members see and hear;
- ``passage``: the turnstile's PASS contacts (or a door contact), one passage per closing.
"""
