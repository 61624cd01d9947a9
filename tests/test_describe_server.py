"""Sentences from a VLM server (describe_server.py): against a stand-in OpenAI-compatible server on 127.0.0.1
(tests/vlm_server.py) that checks each request's shape: the happy path, a server that is down, slow, answers
garbage, too much, is busy or says error, the key kept out of every output, folders and the CLI on A1111's
transformers (simulated as tests/test_sentences.py does)."""

from __future__ import annotations

import importlib
import json
import logging
import socket
import time

import pytest
from PIL import Image
from vlm_server import PARAGRAPH, StandInServer, image_of, instruction_of

from easy_diffuser import describe_server
from easy_diffuser.cli import main
from easy_diffuser.describe_server import MAX_IMAGE_SIDE, ServerDescriber, ServerError, server_describer
from easy_diffuser.engine import Engine
from easy_diffuser.options import DEFAULT_INSTRUCTION, CaptionOptions, ExtractOptions, OptionError, ServerOptions
from easy_diffuser.prompt import escape

KEY = "sk-test-0123456789abcdef-secret"
pytestmark = pytest.mark.usefixtures("one_thread")


def describer(url: str, key: str = "", **server: object) -> ServerDescriber:
    return ServerDescriber(ServerOptions(url, "stand-in-vlm", **server), key)  # type: ignore[arg-type]


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 30, 30))


@pytest.fixture
def picture(tmp_path) -> str:
    path = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "red").save(path)
    return str(path)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine(str(tiny_model_dir), "cpu", cache_dir=tmp_path_factory.mktemp("describe-server-cache"))


@pytest.fixture
def served(engine):
    """The module's engine with a describer set for the test, then without."""
    yield engine
    engine.describer = None


def free_port() -> int:
    """A port nothing listens on (taken and let go at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def cli_args(tiny_model_dir, cache_dir, url: str) -> list[str]:
    return [
        *("--model", str(tiny_model_dir), "--cache-dir", str(cache_dir), "--device", "cpu"),
        *("--prompt-style", "sentences", "--caption-url", url, "--caption-server-model", "stand-in-vlm"),
    ]


# The request and the answer


def test_the_request_is_an_openai_chat_completion_with_the_image_the_instruction_and_the_key(image):
    with StandInServer() as server:
        text = describer(server.url, KEY).caption(image, CaptionOptions(), tags="red circle, floor")
    assert text == PARAGRAPH and server.problems == []
    (request,) = server.requests
    assert request["model"] == "stand-in-vlm" and request["temperature"] == 0
    assert request["max_tokens"] == 256  # the schema's default length, read as a describer's (captioner.describing)
    assert image_of(request).size == (64, 48)
    assert instruction_of(request) == DEFAULT_INSTRUCTION.replace("{tags}", "red circle, floor")
    assert server.authorizations == [f"Bearer {KEY}"]


def test_max_tokens_follow_the_caption_length_no_key_no_header_and_a_big_image_is_sent_smaller():
    big = Image.new("RGB", (3000, 1500), "blue")
    with StandInServer() as server:
        describer(server.url, "", instruction="Describe.").caption(big, CaptionOptions(max_length=77))
    (request,) = server.requests
    assert request["max_tokens"] == 77 and instruction_of(request) == "Describe."
    assert image_of(request).size == (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE // 2)
    assert server.authorizations == [""]


def test_a_long_answer_loses_its_unfinished_sentence_and_its_line_breaks(image):
    with StandInServer(paragraph="A cat\nsits on a mat.  The light comes from") as server:
        assert describer(server.url).caption(image) == "A cat sits on a mat."


def test_no_url_no_describer_and_only_http_urls_are_taken():
    assert server_describer(ServerOptions()) is None  # nothing is ever sent without a URL
    for url in ("ftp://127.0.0.1/v1", "file:///etc/passwd", "127.0.0.1:11434/v1", "http://", "http://h:port/v1"):
        with pytest.raises(OptionError, match=r"^caption_url: must be an http:// or https:// URL"):
            ServerOptions(url, "m")
    with pytest.raises(OptionError, match="must not hold a user or password"):
        ServerOptions("https://me:pw@example.com/v1", "m")
    with pytest.raises(OptionError, match="caption_server_model: must name the server's model"):
        ServerOptions("http://127.0.0.1:1/v1")
    with pytest.raises(OptionError, match="caption_concurrency: must be a whole number from 1 to 64"):
        ServerOptions("http://127.0.0.1:1/v1", "m", concurrency=0)
    assert ServerOptions("HTTPS://example.com/v1/", "m").url == "HTTPS://example.com/v1"


# Bounded and honest failures: one line naming the server


def one_line_naming(error: pytest.ExceptionInfo, url: str) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"VLM server {url}: ")
    return message


def test_a_server_that_is_down_is_one_line_at_once(image):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(ServerError) as error:
        describer(url).caption(image)
    assert "cannot connect" in one_line_naming(error, url) and "is it running?" in str(error.value)
    with pytest.raises(ServerError, match="cannot connect"):
        describer(url).check()
    assert time.monotonic() - started < 10


def test_a_connection_that_never_opens_gives_up_after_the_connect_timeout(image, monkeypatch):
    """A listening socket whose backlog is full: the connection is never accepted (as a host that drops packets)."""
    monkeypatch.setattr(describe_server, "CONNECT_TIMEOUT", 0.5)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        for _ in range(8):  # fill the backlog so the next connection waits
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        try:
            with pytest.raises(ServerError) as error:
                describer(url, timeout=30).caption(image)
        finally:
            for filler in fillers:
                filler.close()
    message = one_line_naming(error, url)
    assert message.endswith("cannot connect (no connection within 0.5 s); is it running? Start it or fix the URL")


def test_a_slow_server_is_one_line_after_the_timeout(image):
    with StandInServer(mode="slow", delay=5) as server:
        started = time.monotonic()
        with pytest.raises(ServerError) as error:
            describer(server.url, timeout=1).caption(image)
        waited = time.monotonic() - started
    assert "no answer within 1 s (the caption timeout)" in one_line_naming(error, server.url)
    assert waited < 4  # the timeout, not the server's 5 s
    with StandInServer(mode="slow", delay=0.2) as server:  # slower than instant, within the timeout: fine
        assert describer(server.url, timeout=5).caption(image) == PARAGRAPH


@pytest.mark.parametrize(
    "mode, says",
    [
        ("garbage", "answered HTTP 200 with something that is not JSON: '<html><body>Bad gateway"),
        ("huge", "answered more than 1024 kB; that is no description"),
        ("error", "answered with an error (HTTP 400): 'model qwen-x not found'"),
        ("no-choices", "answered without choices[0].message.content"),
        ("unauthorized", "wants an API key (HTTP 401); set EASY_DIFFUSER_API_KEY"),
    ],
)
def test_a_bad_answer_is_one_line_naming_the_server(image, mode, says):
    with StandInServer(mode=mode) as server:
        with pytest.raises(ServerError) as error:
            describer(server.url).caption(image)
    assert says in one_line_naming(error, server.url)
    assert len(server.requests) == 1  # no retry for what asking again would not mend


def test_a_busy_server_is_asked_once_more_after_its_retry_after(image):
    with StandInServer(mode="busy-once") as server:
        started = time.monotonic()
        assert describer(server.url).caption(image) == PARAGRAPH
        assert time.monotonic() - started >= 1  # Retry-After: 1 honoured
    assert len(server.requests) == 2
    with StandInServer(mode="busy") as server:
        with pytest.raises(ServerError) as error:
            describer(server.url).caption(image)
    assert "busy (HTTP 429), also when asked again 1 s later" in one_line_naming(error, server.url)
    assert len(server.requests) == 2  # no retry storm: two requests, never a third


@pytest.mark.parametrize("header, wait", [("3", 3.0), ("3600", 10.0), ("-5", 0.0), ("nan", 1.0), (None, 1.0)])
def test_retry_after_is_honoured_up_to_a_cap(header, wait):
    assert describe_server._retry_wait(header) == wait
    assert describe_server._retry_wait("Wed, 21 Oct 2015 07:28:00 GMT") == describe_server.DEFAULT_RETRY_WAIT


def test_a_wrong_key_is_refused_in_one_line_that_does_not_hold_it(image):
    with StandInServer(mode="unauthorized", key="the-right-key") as server:
        with pytest.raises(ServerError) as error:
            describer(server.url, KEY).check()
        assert describer(server.url, "the-right-key").caption(image) == PARAGRAPH
    assert "refused the API key (HTTP 401)" in one_line_naming(error, server.url) and KEY not in str(error.value)


def test_a_long_key_the_server_echoes_is_blanked_before_the_message_is_cut(image):
    """A message quotes 60 characters of the server's text: cut first, the key's head would be left in it."""
    key = "sk-" + "0123456789abcdef" * 5
    with StandInServer(mode="echo-key") as server:
        with pytest.raises(ServerError) as error:
            describer(server.url, key).caption(image)
    message = one_line_naming(error, server.url)
    assert "'rejected Bearer ***'" in message
    assert not any(key[start : start + 8] in message for start in range(len(key) - 8))


# The engine: the same prompt style logic as an in-process describer


def test_the_engine_leads_with_the_servers_paragraph_then_the_tags_it_does_not_say(served, image):
    plain = served.extract(image, ExtractOptions(prompt_style="tags"))
    with StandInServer() as server:
        served.describer = describer(server.url)
        result = served.extract(image, ExtractOptions(prompt_style="sentences"))
    assert result.prompt_style == "sentences" and result.caption == PARAGRAPH
    assert result.prompt.startswith(PARAGRAPH + " ") or result.prompt == PARAGRAPH
    listed = [tag for tag in result.prompt.removeprefix(PARAGRAPH).strip().split(", ") if tag]
    assert listed == [escape(tag.tag) for tag in result.tags if tag.role == "positive"]
    assert result.negative_prompt == plain.negative_prompt
    assert f"described by stand-in-vlm at {server.url}" in result.style_note
    # Grounded: the instruction held the image's own tags, as the tags style selects them.
    positive = ", ".join(tag.tag for tag in plain.tags if tag.role == "positive")
    assert instruction_of(server.requests[0]).endswith(f"use those that are right: {positive}")


def test_an_instruction_without_tags_asks_without_selecting_them_and_tags_style_sends_nothing(served, image):
    with StandInServer() as server:
        served.describer = describer(server.url, instruction="Describe the picture.")
        assert served.grounding(served.encode([image]), ExtractOptions()) == []
        served.extract(image, ExtractOptions(prompt_style="sentences"))
        assert instruction_of(server.requests[0]) == "Describe the picture."
        served.extract(image, ExtractOptions(prompt_style="tags"))  # no caption asked: nothing sent
    assert len(server.requests) == 1


# The command line, on A1111's transformers


def host_transformers():
    return importlib.import_module("transformers")


def test_cli_on_a1111s_transformers_prints_the_servers_paragraph_then_the_tags(
    engine, tiny_model_dir, tmp_path, picture, capsys, monkeypatch
):
    pytest.importorskip("transformers")
    monkeypatch.setattr(host_transformers(), "__version__", "4.30.2")  # A1111 1.10's pin: no Qwen2-VL
    with StandInServer() as server:
        args = cli_args(tiny_model_dir, engine.cache_dir, server.url)
        code, out, err = run_cli([picture, *args[:-4]], capsys)
        assert code == 2 and "needs transformers 4.45.0 or newer" in err  # without a server: refused, as today
        monkeypatch.setattr("easy_diffuser.engine.load_captioner", lambda *a, **k: pytest.fail("loaded a captioner"))
        code, out, err = run_cli([picture, *args], capsys)
    assert code == 0 and err == "" and server.problems == [] and len(server.requests) == 1
    name, prompt, negative = out.splitlines()[:3]
    assert prompt.startswith(f"Prompt: {PARAGRAPH} ") and negative.startswith("Negative prompt: ")
    assert len(prompt.removeprefix(f"Prompt: {PARAGRAPH} ").split(", ")) >= 1  # then the tags it does not say


def test_cli_a_server_that_is_down_is_exit_2_in_one_line_within_10_s(engine, tiny_model_dir, tmp_path, picture, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    code, out, err = run_cli([picture, *cli_args(tiny_model_dir, engine.cache_dir, url)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and time.monotonic() - started < 10
    assert err.startswith(f"error: VLM server {url}: cannot connect")


def test_cli_refuses_a_url_that_is_not_http_before_loading_anything(tmp_path, picture, capsys):
    args = [picture, "--model", str(tmp_path / "no-such-model"), "--prompt-style", "sentences"]
    code, out, err = run_cli([*args, "--caption-url", "file:///etc", "--caption-server-model", "m"], capsys)
    assert code == 2 and err == "error: caption_url: must be an http:// or https:// URL, not 'file:///etc'\n"
    code, out, err = run_cli([*args, "--caption-url", "http://127.0.0.1:9/v1"], capsys)
    assert code == 2 and "caption_server_model: must name the server's model" in err


def test_cli_folder_asks_concurrently_fails_only_the_image_the_server_fails_and_resumes(
    engine, tiny_model_dir, tmp_path, capsys
):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for index in range(7):
        Image.new("RGB", (40, 40), (30 * index, 0, 0)).save(folder / f"{index}.png")
    Image.new("RGB", (13, 40), "blue").save(folder / "narrow.png")  # the stand-in fails images 13 pixels wide
    records = tmp_path / "records.jsonl"
    with StandInServer(delay=0.3, refuse_width=13) as server:
        args = [str(folder), *cli_args(tiny_model_dir, engine.cache_dir, server.url), "--output", str(records)]
        code, out, err = run_cli([*args, "--caption-concurrency", "4"], capsys)
    assert code == 1 and server.problems == [] and server.most_in_flight == 4
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    failed = [line for line in lines if line["error"]]
    assert len(lines) == 8 and [line["path"] for line in failed] == [str(folder / "narrow.png")]
    assert "CUDA out of memory" in failed[0]["error"] and f"VLM server {server.url}" in failed[0]["error"]
    assert not (folder / "narrow.txt").exists() and (folder / "0.txt").read_text().startswith(PARAGRAPH)
    assert "7 captioned" in err and "1 failed" in err
    with StandInServer() as server:  # the rerun asks again for the failed image only
        args = [str(folder), *cli_args(tiny_model_dir, engine.cache_dir, server.url), "--output", str(records)]
        code, out, err = run_cli(args, capsys)
    assert code == 0 and len(server.requests) == 1 and image_of(server.requests[0]).width == 13
    assert (folder / "narrow.txt").read_text().startswith(PARAGRAPH)


def test_the_key_is_in_no_output_stdout_stderr_records_captions_or_logs(
    engine, tiny_model_dir, tmp_path, capsys, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (40, 40), "red").save(folder / "a.png")
    Image.new("RGB", (13, 40), "red").save(folder / "b.png")
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv("EASY_DIFFUSER_API_KEY", KEY)
    with StandInServer(mode="echo-key") as echoing, StandInServer(refuse_width=13) as fine:
        single = run_cli(
            [str(folder / "a.png"), *cli_args(tiny_model_dir, engine.cache_dir, echoing.url), "--json"], capsys
        )
        folder_args = [str(folder), *cli_args(tiny_model_dir, engine.cache_dir, fine.url), "--output", str(records)]
        batch = run_cli(folder_args, capsys)
    keyed = describer(fine.url, KEY)
    assert echoing.authorizations == [f"Bearer {KEY}"] and fine.authorizations[0] == f"Bearer {KEY}"  # it was sent
    assert single[0] == 1 and "rejected Bearer ***" in single[2]
    assert batch[0] == 1
    written = [records.read_text(), *(path.read_text() for path in folder.glob("*.txt"))]
    outputs = [*single[1:], *batch[1:], *written, caplog.text, repr(keyed), str(keyed.server)]
    assert all(KEY not in output for output in outputs)
