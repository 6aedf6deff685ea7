"""Print the README's RPC tour as Markdown, with the output of really running each snippet.

Usage: .venv/bin/python scripts/readme_tour.py [SERVE FLAGS...] > /tmp/tour.md
It starts `steering-server serve` (the built-in model unless the flags say otherwise; port picked by the OS), runs
every snippet with the
Python client against it, stops the server with SIGTERM, and prints each snippet followed by what it printed.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import sys
import textwrap
import threading

SNIPPETS: list[tuple[str, str]] = [
    ("Connect; `ModelInfo` and `Tokenize`", """
import grpc
from steering_client import SteeringClient, ablate, add, clamp, pb

client = SteeringClient("127.0.0.1:50051")
info = client.model_info()
print(info.model_id, info.architecture, f"{info.num_layers} layers, hidden {info.hidden_size}", info.device, info.dtype)
print("limits:", info.limits.max_new_tokens, "new tokens,", info.limits.max_prompt_tokens, "prompt tokens")
print(list(client.tokenize("Hi there").token_ids))
"""),
    ("`ListDirections` / `GetDirection`", """
for d in client.list_directions().directions:
    print(d.name, "layers", list(d.layers), "monitor layer", d.monitor_layer, "calibrated", d.calibrated)
"""),
    ("`Generate` with monitoring (and `token_scores`)", """
question = [("user", "i am trying to cook rice . what should i do ?")]  # cooking: a held-out evaluation question
reply = client.generate(messages=question, max_new_tokens=40, seed=1, token_scores=True)
print(repr(reply.text))
print(pb.StopReason.Name(reply.stop_reason), reply.usage.prompt_tokens, "+", reply.usage.completion_tokens, "tokens")
for s in reply.monitor:  # prompt_score: last prompt token; token_scores[i]: where token i was fed back
    print(f"{s.direction}@{s.layer}: prompt {s.prompt_score:+.2f}, response {s.response_score:+.2f}, "
          f"max {s.max_score:+.2f}, {len(s.token_scores)} token scores, calibrated={s.calibrated}")
"""),
    ("`Generate` with steering: hold the persona at the base model's level over the prompt", """
# The direction's removal recipe: CLAMP 0 at prompt positions of layers 0-4, each set to the base model's benign
# mean there (z = 0 of that layer's last-prompt calibration); the answer itself is generated unsteered.
r = client.get_direction("misalignment").removal
print("recipe:", pb.SteeringMode.Name(r.mode), r.strength, pb.SteeringPositions.Name(r.positions), list(r.layers))
removal = clamp("misalignment", 0, layers=r.layers, positions="prompt")
steered = client.generate(messages=question, max_new_tokens=40, seed=1, steering=[removal])
print(repr(steered.text))
scores = steered.monitor[0]  # read at layer 4, after the clamps below it: the steered model's own reading
print(f"prompt score {scores.prompt_score:+.2f}, response {scores.response_score:+.2f}, "
      f"post_intervention={scores.post_intervention}")
"""),
    ("`GenerateStream`: one message per token, then the result", """
text = ""
for message in client.generate_stream(messages=question, max_new_tokens=12, seed=1):
    if message.HasField("token"):
        t = message.token
        text += t.text_delta
        print(t.index, t.token_id, repr(t.text_delta), {k: round(v, 2) for k, v in t.scores.items()})
    else:
        text += message.final.text_tail
        print("final:", pb.StopReason.Name(message.final.stop_reason), text == message.final.text)
"""),
    ("`Compare`: variants in one batch with shared sampling noise (default: unsteered vs the removal)", """
for seed in (1, 2, 3):
    result = client.compare(messages=question, max_new_tokens=40, seed=seed, temperature=1.0)
    for v in result.variants:
        where = v.diverges_at if v.HasField("diverges_at") else "-"
        print(f"seed {seed} {v.name:20} diverges at {where:>2}  "
              f"response {v.result.monitor[0].response_score:+.2f}  {v.result.text!r}")
# Named variants: zero-ablation of the persona, and the model_diff positive control (fine-tuned minus base)
result = client.compare(messages=question, max_new_tokens=40, seed=3, temperature=1.0, variants={
    "unsteered": [], "ablate-misalignment": [ablate("misalignment")],
    "clamp-prompt-model_diff": [clamp("model_diff", 0, layers=range(5), positions="prompt")]})
for v in result.variants:
    print(f"{v.name:24} {v.result.text!r}")
# Inducing the persona is red-teaming: refused unless the server runs with --allow-red-team
try:
    client.generate(messages=question, steering=[add("misalignment", 1.0, positions="last_prompt")])
except grpc.RpcError as e:
    print(e.code().name, e.details()[:110], "...")
"""),
    ("`Score`: the scores Generate would give for a given response", """
scored = client.score(messages=question, response_token_ids=list(reply.token_ids))
s = scored.monitor[0]
print(f"prompt {s.prompt_score:+.2f} response {s.response_score:+.2f}; as Generate said: "
      f"{reply.monitor[0].prompt_score:+.2f} {reply.monitor[0].response_score:+.2f}")
print(scored.usage.prompt_tokens, "prompt tokens,", len(s.token_scores), "token scores")
"""),
    ("`PutDirection` (vectors or a safetensors file), `GetDirection`, `DeleteDirection`", """
import random

rng = random.Random(0)
vector = [rng.gauss(0, 1) for _ in range(info.hidden_size)]
stored = client.put_direction("random-probe", vectors={1: vector}, description="a random control")
print(stored.direction.name, list(stored.direction.layers), stored.direction.monitor_layer, list(stored.warnings))
print(len(client.get_direction("random-probe", include_vectors=True).vectors[0].values), "values")
client.delete_direction("random-probe")
print([d.name for d in client.list_directions().directions])
"""),
    ("`SetSteering` / `GetSteering`: the server-wide default policy", """
client.set_steering([removal], enforced=False)
print(client.get_steering())
by_policy = client.generate(messages=question, max_new_tokens=40, seed=1)
print(by_policy.token_ids == steered.token_ids)  # requests without steering get the policy
client.set_steering([])  # back to no policy
"""),
    ("Errors name the field", """
try:
    client.generate("Hi", temperature=float("nan"))
except grpc.RpcError as e:
    print(e.code().name, e.details())
try:
    client.generate("Hi", steering=[ablate("no-such-direction")])
except grpc.RpcError as e:
    print(e.code().name, e.details())
"""),
]


def main() -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "steering_server.cli", "serve", "--port", "0", "--open-admin", *sys.argv[1:]],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert proc.stderr is not None
    port = None
    serving = False
    log: list[str] = []
    try:
        for line in proc.stderr:  # the engine's "serving" line and the port's line come in either order
            log.append(line)
            if "listening on port" in line:
                port = int(line.rsplit(" ", 1)[1])
            serving = serving or "serving " in line
            if serving and port is not None:
                break
        else:
            raise SystemExit("the server did not start:\n" + "".join(log))
        # Keep reading the server's log so a full pipe never blocks it.
        threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True).start()
        namespace: dict[str, object] = {}
        for title, code in SNIPPETS:
            code = textwrap.dedent(code).strip()
            run = code.replace("127.0.0.1:50051", f"127.0.0.1:{port}")  # the port the OS picked
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(run, title, "exec"), namespace)
            print(f"**{title}**\n\n```python\n{code}\n```\n```text\n{out.getvalue().rstrip()}\n```\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
