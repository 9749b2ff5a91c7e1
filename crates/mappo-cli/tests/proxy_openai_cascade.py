"""The official `openai` client against a cascade policy behind `mappo serve`'s proxy.

Run by crates/mappo-cli/tests/proxy.rs (in the venv it makes):
    python proxy_openai_cascade.py MAPPO_URL PROMPTS_JSON SMALL_BAD SMALL_GOOD
PROMPTS_JSON is a list of {"text", "bad"}: the fake `small` upstream answers SMALL_BAD to a text
ending in " (hard)" and SMALL_GOOD otherwise; `large` answers "[large] large-model: <text>".
Every request is a cascade: mappo calls the first agent, looks at its answer, and accepts it or
escalates to `large`. Prints one JSON object: each cascade's headers and answer, for the Rust side.
"""

import json
import sys
import urllib.request

import openai

base, prompts, bad, good = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)
out = {"cascades": []}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def expected(agents, text):
    last = agents.split(",")[-1]
    if last == "large":
        return f"[large] large-model: {text}"
    return bad if text.endswith(" (hard)") else good


for i, p in enumerate(prompts):
    text = p["text"]
    stream = i % 4 == 3  # every fourth cascade asks for a stream
    raw = client.chat.completions.with_raw_response.create(
        model="mappo",
        messages=[{"role": "user", "content": text}],
        stream=stream,
        extra_body={"mappo": {"cost_weight": 0.3}},
    )
    h = raw.headers
    agents, ids, episode = h.get("x-mappo-agents"), h.get("x-mappo-decision-id"), h.get("x-mappo-episode-id")
    check(agents and ids and episode, f"cascade {i} headers {dict(h)}")
    check(h.get("x-mappo-agent") == agents.split(",")[-1], f"cascade {i} headers {dict(h)}")
    if stream:
        check(h.get("content-type", "").startswith("text/event-stream"), f"cascade {i}: not a stream")
        content = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        content = raw.parse().choices[0].message.content
    check(content == expected(agents, text), f"cascade {i} via {agents}: {content!r}")
    # The reward of the cascade as a whole: right answers count, escalations cost.
    right = agents.endswith("large") or not p["bad"]
    reward = (1.0 if right else 0.0) - 0.3 * (0.1 if agents == "small" else 1.0)
    req = urllib.request.Request(
        base + "/v1/feedback",
        data=json.dumps({"episode_id": episode, "reward": reward, "end": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        r = json.load(resp)
    check(r.get("accepted") is True, f"cascade {i} feedback {r}")
    out["cascades"].append(
        {"bad": p["bad"], "agents": agents, "decisions": ids.split(","), "episode_id": episode, "stream": stream}
    )

print(json.dumps(out))
