"""The webui generator against servers that misbehave: each failure is one line naming the server, the answer's
size and the whole exchange's time are bounded, and only raster images are decoded.

The servers are stand-ins on 127.0.0.1 made here: a raw socket server for answers that are not HTTP, are too
large or come too slowly, and a JSON one for the images. Every server gives up on its own within seconds."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import struct
import threading
import time
import zlib
from typing import Callable, Iterator

import pytest
from PIL import EpsImagePlugin, Image

from easy_diffuser import cli
from easy_diffuser.calibration.generators import WebuiHttpGenerator, make_generator
from easy_diffuser.webui_client import WebuiError, answer_bytes, txt2img

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def _read_request(connection: socket.socket) -> None:
    """The request's head and body, so that the answer is not sent to a client still writing."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = lengths[0] if lengths else 0
    while len(body) < length and (chunk := connection.recv(65536)):
        body += chunk


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A server that reads one request and lets `answer` write whatever bytes it likes; gone within 15 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as connection:
            connection.settimeout(10)
            _read_request(connection)
            answer(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(15)


def json_answer(payload: dict) -> Callable[[socket.socket], None]:
    def answer(connection: socket.socket) -> None:
        body = json.dumps(payload).encode()
        connection.sendall(OK + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    return answer


def one_line_naming(error: pytest.ExceptionInfo, url: str) -> str:
    message = str(error.value)
    assert "\n" not in message and url in message and len(message) < 400
    return message


ANSWERS = {
    "not HTTP": (lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"), "not an HTTP answer"),
    "100 kB header": (lambda c: c.sendall(OK + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"), "header line too long"),
    "101 headers": (
        lambda c: c.sendall(OK + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n"),
        "more than 100 headers",
    ),
    "short body": (lambda c: c.sendall(OK + b'Content-Length: 1000\r\n\r\n{"images": '), "ended before its length"),
    "3 GB declared": (
        lambda c: c.sendall(OK + b"Content-Length: 3000000000\r\n\r\n" + b" " * 65536),
        "3,000,000,000 bytes",
    ),
}


@pytest.mark.parametrize("case", ANSWERS)
def test_a_server_that_does_not_answer_as_a_webui_is_one_line_naming_it(case):
    answer, problem = ANSWERS[case]
    with raw_server(answer) as url:
        with pytest.raises(WebuiError) as error:
            WebuiHttpGenerator(url, 64, 64, timeout=10).generate("red", "", 0)
    assert problem in one_line_naming(error, url)


def test_an_answer_without_a_length_is_read_only_up_to_what_one_image_can_take():
    sent = []

    def endless(connection: socket.socket) -> None:  # no Content-Length: the body ends when the server closes
        connection.sendall(OK + b"\r\n")
        for _ in range(64):  # 64 MiB at most, far past the limit
            connection.sendall(b" " * (1 << 20))
            sent.append(1)

    with raw_server(endless) as url:
        with pytest.raises(WebuiError) as error:
            WebuiHttpGenerator(url, 64, 64, timeout=10).generate("red", "", 0)
    assert f"more than {answer_bytes(64, 64):,} bytes" in one_line_naming(error, url)
    assert answer_bytes(64, 64) < 9 << 20 and answer_bytes(2048, 2048) < 40 << 20


def test_a_server_sending_a_byte_at_a_time_is_cut_at_the_deadline_for_the_whole_answer():
    def dribble(connection: socket.socket) -> None:  # each byte well within a per-read timeout; 10 s in all
        connection.sendall(OK)
        for byte in b"X-Slow: " + b"a" * 32:
            connection.sendall(bytes([byte]))
            time.sleep(0.25)

    with raw_server(dribble) as url:
        started = time.monotonic()
        with pytest.raises(WebuiError) as error:
            txt2img("red", "", url, timeout=1)
        took = time.monotonic() - started
    assert "did not answer within 1 s" in one_line_naming(error, url) and took < 3


def test_a_fast_answer_within_the_deadline_still_arrives():
    with raw_server(json_answer({"images": [png_base64(Image.new("RGB", (8, 8), "red"))]})) as url:
        image = WebuiHttpGenerator(url, 64, 64, timeout=5).generate("red", "", 0)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def png_base64(image: Image.Image) -> str:
    data = io.BytesIO()
    image.save(data, "PNG")
    return base64.b64encode(data.getvalue()).decode()


def png_bomb(side: int) -> str:
    """A PNG of side x side black pixels in a few kilobytes: its header promises what decoding would cost."""
    row = b"\0" + b"\0" * (side // 8)  # filter byte, then a 1-bit row
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * side, 9))
    return base64.b64encode(data + chunk(b"IEND", b"")).decode()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\n%%EOF\n"


@pytest.mark.parametrize(
    "images, problem",
    [(None, "answer has no 'images' list"), ([7], "image in the answer is int"), (["not base64!"], "not valid base64")],
)
def test_an_answer_without_usable_images_is_one_line_naming_the_server(images, problem):
    with raw_server(json_answer({"images": images})) as url:
        with pytest.raises(WebuiError) as error:
            WebuiHttpGenerator(url, 64, 64, timeout=10).generate("red", "", 0)
    assert problem in one_line_naming(error, url)


def test_an_image_bomb_is_refused_before_it_is_decoded():
    with raw_server(json_answer({"images": [png_bomb(40_000)]})) as url:
        with pytest.raises(WebuiError) as error:
            WebuiHttpGenerator(url, 64, 64, timeout=10).generate("red", "", 0)
    assert "decompression bomb" in one_line_naming(error, url)


def test_an_eps_image_never_reaches_pillows_eps_plugin(monkeypatch):
    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    with raw_server(json_answer({"images": [base64.b64encode(EPS).decode()]})) as url:
        with pytest.raises(WebuiError) as error:
            WebuiHttpGenerator(url, 64, 64, timeout=10).generate("red", "", 0)
    assert "not an image file" in one_line_naming(error, url) and opened == []


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999", "http://web ui:7860", "http://"])
def test_an_invalid_url_is_one_line_before_anything_is_sent(url):
    with pytest.raises(ValueError) as error:
        make_generator(url)
    assert "not a webui URL such as http://127.0.0.1:7860" in one_line_naming(error, url)
    with pytest.raises(WebuiError, match="not a webui URL"):
        txt2img("red", "", url)


def test_send2uis_client_refuses_what_is_not_http_and_escapes_a_newline_in_the_url():
    with pytest.raises(WebuiError, match="^ftp://127.0.0.1/sdapi/v1/txt2img: not a webui URL"):
        txt2img("red", "", "ftp://127.0.0.1")
    with pytest.raises(WebuiError) as error:
        txt2img("red", "", "http://127.0.0.1\n:7860")
    assert str(error.value).startswith("http://127.0.0.1\\n:7860/sdapi/v1/txt2img: not a webui URL")


def test_cli_check_against_a_server_that_is_not_a_webui_is_one_line_and_exit_1(tmp_path, capsys, shapes_red_circle):
    argv = ["check", str(shapes_red_circle), "--model", "shapes-demo", "--cache-dir", str(tmp_path), "--prompt", "red"]
    with raw_server(ANSWERS["not HTTP"][0]) as url:
        assert cli.main([*argv, "--generator", url]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Embedding " not in line]  # the vocabulary's bar
    assert "Traceback" not in err and len(lines) == 1
    assert lines[0].startswith("error: ") and url in lines[0] and "not an HTTP answer" in lines[0]


def test_cli_check_with_an_invalid_url_is_a_setup_error_exit_2(tmp_path, capsys, shapes_red_circle):
    argv = ["check", str(shapes_red_circle), "--model", "shapes-demo", "--cache-dir", str(tmp_path), "--prompt", "red"]
    assert cli.main([*argv, "--generator", "http://127.0.0.1:99999"]) == 2
    err = capsys.readouterr().err.splitlines()  # refused before the model loads: no progress bar either
    assert len(err) == 1 and err[0].startswith("error: http://127.0.0.1:99999: not a webui URL")
