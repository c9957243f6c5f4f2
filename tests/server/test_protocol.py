"""OpenAI request checks and the stop-sequence trimmer, without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from restdecode.server.protocol import APIError, StopTrimmer, parse_request

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_valid_chat_request_becomes_engine_options():
    request = parse_request(CHAT | {"max_completion_tokens": 9, "temperature": 0.5, "top_p": 0.9,
                                    "seed": 4, "stop": "END", "stream": True,
                                    "stream_options": {"include_usage": True}, "n": 1,
                                    "frequency_penalty": 0, "logprobs": False}, "chat")
    options = request.options(request.max_tokens)
    assert (options.max_new_tokens, options.temperature, options.top_p, options.seed,
            options.stop_strings) == (9, 0.5, 0.9, 4, ("END",))
    assert request.stream and request.include_usage


def test_developer_messages_and_text_parts_are_accepted():
    request = parse_request({"model": "m", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]}, "chat")
    assert request.messages == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "ab"}]


@pytest.mark.parametrize("change, param", [
    ({"n": 2}, "n"), ({"presence_penalty": 0.5}, "presence_penalty"), ({"foo": 1}, "foo"),
    ({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a"] * 5}, "stop"), ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": []}, "messages"), ({"model": None}, "model"), ({"seed": True}, "seed"),
])
def test_bad_parameters_are_400s_naming_the_parameter(change, param):
    with pytest.raises(APIError) as raised:
        parse_request(CHAT | change, "chat")
    assert raised.value.status == 400 and raised.value.param == param
    assert set(raised.value.body()["error"]) == {"message", "type", "param", "code"}


texts = st.text(alphabet="abEND", max_size=30)


@given(text=texts, cuts=st.lists(st.integers(0, 30), max_size=6),
       stops=st.lists(st.text(alphabet="abEND", min_size=1, max_size=4), max_size=3))
def test_streamed_text_is_the_text_before_the_first_stop(text, cuts, stops):
    """Oracle: the text up to the earliest occurrence of any stop sequence."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[:min(found)] if found else text
    trimmer = StopTrimmer(tuple(stops))
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    sent = "".join(trimmer.add(text[a:b]) for a, b in zip(bounds, bounds[1:]))
    sent += trimmer.finish()
    assert sent == expected == trimmer.output


def test_the_listening_socket_is_tcp_so_asyncio_disables_nagle():
    """Otherwise each small streamed chunk waits ~40 ms for the client's acknowledgement."""
    import socket

    from restdecode.cli.serve import _bind

    listener = _bind("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
    finally:
        listener.close()


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "0"], "--max-batch"),
    (["--max-batch", "4", "--compile"], "eagerly"),
    (["--context", "0"], "--context"),
    (["--context", "64", "--backend", "transformers"], "applies to the llama.cpp backend only"),
])
def test_serve_refuses_bad_batch_options_before_loading(args, message, capsys):
    from restdecode.cli import main

    assert main(["serve", "--model", "/nonexistent", "--port", "0", *args]) == 1
    assert message in capsys.readouterr().err
