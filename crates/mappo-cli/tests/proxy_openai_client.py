"""The official `openai` client against `mappo serve`'s OpenAI-compatible proxy.

Run by crates/mappo-cli/tests/proxy.rs (in a venv it makes):
    python proxy_openai_client.py MAPPO_URL API_KEY EXPECTED_JSON
EXPECTED_JSON maps each agent to {"upstream": NAME, "model": UPSTREAM_MODEL}; the fake upstreams
answer "[NAME] MODEL: <last user text>" (streamed in pieces with a pause after the first).
Prints one JSON object with what the Rust side checks further (decision ids, agents).
"""

import json
import sys
import time
import urllib.request

import openai

base, key, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
out = {"openai_version": openai.__version__}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def answer_of(agent, text):
    e = expected[agent]
    return f"[{e['upstream']}] {e['model']}: {text}"


# The models: "mappo" and the agents.
ids = [m.id for m in client.models.list().data]
check(ids[0] == "mappo" and sorted(ids[1:]) == sorted(expected), f"models {ids}")

# Routed by mappo, not streamed; the answer comes from the agent named in x-mappo-agent.
text = "my parcel never arrived and I want a refund"
raw = client.chat.completions.with_raw_response.create(
    model="mappo",
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
    extra_body={"mappo": {"cost_weight": 0.0}},
)
agent, did = raw.headers.get("x-mappo-agent"), raw.headers.get("x-mappo-decision-id")
check(agent in expected and did, f"headers {dict(raw.headers)}")
completion = raw.parse()
content = completion.choices[0].message.content
check(content == answer_of(agent, text), f"answer {content!r} for agent {agent}")
check(completion.model == expected[agent]["model"], f"model {completion.model}")
out["routed"] = {"decision_id": did, "agent": agent}

# Routed and streamed; the text is in content parts.
text = "write a short poem about the sea"
raw = client.chat.completions.with_raw_response.create(
    model="mappo",
    messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
    stream=True,
)
sagent, sdid = raw.headers.get("x-mappo-agent"), raw.headers.get("x-mappo-decision-id")
check(sagent in expected and sdid, f"stream headers {dict(raw.headers)}")
check(raw.headers.get("content-type", "").startswith("text/event-stream"), "stream content type")
pieces, times, finish = [], [], None
for chunk in raw.parse():  # the client stops at "data: [DONE]"
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
            times.append(time.monotonic())
        finish = c.finish_reason or finish
check("".join(pieces) == answer_of(sagent, text), f"streamed {pieces!r}")
check(len(pieces) >= 3 and finish == "stop", f"{len(pieces)} pieces, finish {finish}")
# The upstream pauses 1 s after its first piece: passed through, not buffered, the first piece
# arrives that much before the last.
gap = times[-1] - times[0]
check(gap > 0.7, f"the stream was buffered: first and last piece {gap:.3f} s apart")
out["streamed"] = {"decision_id": sdid, "agent": sagent, "pieces": len(pieces), "gap_s": round(gap, 3)}

# Forced agent.
raw = client.chat.completions.with_raw_response.create(
    model="math", messages=[{"role": "user", "content": "what is 2 + 2?"}]
)
check(raw.headers.get("x-mappo-agent") == "math", f"forced headers {dict(raw.headers)}")
content = raw.parse().choices[0].message.content
check(content == answer_of("math", "what is 2 + 2?"), f"forced answer {content!r}")
out["forced"] = {"decision_id": raw.headers.get("x-mappo-decision-id"), "agent": "math"}

# An unknown model: the client raises NotFoundError; the message lists the models.
try:
    client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    check(False, "an unknown model was accepted")
except openai.NotFoundError as e:
    check("mappo" in str(e) and "math" in str(e), f"unknown model error {e}")



def feedback(body):
    req = urllib.request.Request(
        base + "/v1/feedback",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


# Feedback for the routed decision.
fb = feedback({"decision_id": did, "reward": 1.0})
check(fb == {"decision_id": did, "accepted": True}, f"feedback {fb}")

# A three-turn conversation: one episode, each turn a step of it. The id goes in the header,
# then in the mappo object, then in both.
conversation = "openai-chat-1"
messages = [{"role": "system", "content": "be brief"}]
turns = []
for i, text in enumerate(["my parcel never arrived", "can you refund it?", "thanks, and what is 7 * 6?"]):
    messages.append({"role": "user", "content": text})
    how = {}
    if i in (0, 2):
        how["extra_headers"] = {"x-mappo-episode-id": conversation}
    if i in (1, 2):
        how["extra_body"] = {"mappo": {"episode_id": conversation}}
    raw = client.chat.completions.with_raw_response.create(model="mappo", messages=messages, **how)
    tagent, tdid = raw.headers.get("x-mappo-agent"), raw.headers.get("x-mappo-decision-id")
    check(raw.headers.get("x-mappo-episode-id") == conversation, f"turn {i} headers {dict(raw.headers)}")
    check(tagent in expected and tdid and "," not in tdid, f"turn {i} headers {dict(raw.headers)}")
    content = raw.parse().choices[0].message.content
    check(content == answer_of(tagent, text), f"turn {i} answer {content!r}")
    messages.append({"role": "assistant", "content": content})
    turns.append({"decision_id": tdid, "agent": tagent})
fb = feedback({"episode_id": conversation, "reward": 0.5, "end": True})
check(fb.get("accepted") is True and fb.get("episode_id") == conversation, f"episode feedback {fb}")
# The conversation has ended: a fourth turn is refused (409).
messages.append({"role": "user", "content": "one more thing"})
try:
    client.chat.completions.create(
        model="mappo", messages=messages, extra_headers={"x-mappo-episode-id": conversation}
    )
    check(False, "a turn after the end was accepted")
except openai.ConflictError as e:
    check("ended" in str(e), f"turn after the end: {e}")
out["conversation"] = {"episode_id": conversation, "turns": turns}

print(json.dumps(out))
