"""Stand-in for modules/lowvram.py; records when the SD model is sent to the CPU."""

calls: list = []


def send_everything_to_cpu():
    calls.append("send_everything_to_cpu")
