"""The Tinker Python SDK against `rft serve`, unchanged: a LoRA training client, sampling,
forward_backward with every loss, optim_step, saving and loading state, saving for a sampler
and sampling from it, checkpoint listing.

Usage: tinker_flow.py BASE_URL API_KEY MODEL OUT.json

Writes to OUT.json what it sent and what it got (the datums, every loss and gradient norm, the
log-probs), which tests/tinker.rs replays through `rft_train::primitives` directly to check
the server computes the same numbers. Prints OK at the end.
"""

import json
import math
import sys

import tinker
from tinker import types

base_url, api_key, model, out_path = sys.argv[1:5]
SEED = 11
RANK = 4

service = tinker.ServiceClient(base_url=base_url, api_key=api_key)
names = [m.model_name for m in service.get_server_capabilities().supported_models]
assert model in names, names

training = service.create_lora_training_client(
    base_model=model, rank=RANK, seed=SEED
).result()
info = training.get_info()
assert info.model_data.model_name == model and info.lora_rank == RANK, info

# The tokenizer loads offline from the folder get_info names.
tokenizer = training.get_tokenizer()
prompt = tokenizer.encode("The capital of France is")
assert tokenizer.decode(prompt) == "The capital of France is", tokenizer.decode(prompt)

# Sampling: the fresh adapter (B = 0) is the base model.
sampler = training.save_weights_and_get_sampling_client().result()
params = types.SamplingParams(max_tokens=6, seed=5, temperature=1.0, top_k=50, top_p=0.95)
response = sampler.sample(
    types.ModelInput.from_ints(prompt),
    num_samples=3,
    sampling_params=params,
    include_prompt_logprobs=True,
).result()
assert len(response.sequences) == 3
for seq in response.sequences:
    assert seq.sequence_id, seq
    assert 1 <= len(seq.tokens) <= 6 and len(seq.logprobs) == len(seq.tokens), seq
    assert seq.stop_reason in ("stop", "length")
assert len(response.prompt_logprobs) == len(prompt)
assert response.prompt_logprobs[0] is None
assert all(lp is not None and lp < 0 for lp in response.prompt_logprobs[1:])
# The same seed draws the same tokens.
again = sampler.sample(types.ModelInput.from_ints(prompt), 3, params).result()
assert [s.tokens for s in again.sequences] == [s.tokens for s in response.sequences]
# Greedy with a stop string ends at it.
greedy = sampler.sample(
    types.ModelInput.from_ints(prompt),
    1,
    types.SamplingParams(max_tokens=16, temperature=0.0, stop=["."]),
).result()
assert greedy.sequences[0].stop_reason == "stop", greedy

# Datums built the way the cookbook builds them: model_input is prompt + sampled[:-1], the
# targets are shifted by one, prompt positions padded with zeros.
datums = []
records = []
for i, seq in enumerate(response.sequences):
    tokens = prompt + seq.tokens
    n = len(tokens) - 1
    ob = len(prompt) - 1
    advantage = [1.0, -0.5, 0.25][i]
    record = {
        "tokens": tokens[:-1],
        "targets": tokens[1:],
        "logprobs": [0.0] * ob + list(seq.logprobs),
        "advantages": [0.0] * ob + [advantage] * (n - ob),
        "weights": [0.0] * ob + [1.0] * (n - ob),
    }
    records.append(record)


def datum(record, loss_fn):
    if loss_fn == "cross_entropy":
        inputs = {"target_tokens": record["targets"], "weights": record["weights"]}
    else:
        inputs = {
            "target_tokens": record["targets"],
            "logprobs": record["logprobs"],
            "advantages": record["advantages"],
        }
    return types.Datum(model_input=types.ModelInput.from_ints(record["tokens"]), loss_fn_inputs=inputs)


adam = types.AdamParams(learning_rate=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.01, grad_clip_norm=5.0)
steps = []
for loss_fn, config in [
    ("cross_entropy", None),
    ("importance_sampling", None),
    ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
    ("dro", {"beta": 0.5}),
    ("gspo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.3}),
]:
    batch = [datum(r, loss_fn) for r in records]
    forward = training.forward(batch, loss_fn, loss_fn_config=config).result()
    # Gradients accumulate over two calls (the batch in two chunks) until optim_step.
    first = training.forward_backward(batch[:2], loss_fn, loss_fn_config=config)
    second = training.forward_backward(batch[2:], loss_fn, loss_fn_config=config)
    optim = training.optim_step(adam)
    first, second, optim = first.result(), second.result(), optim.result()
    loss = first.metrics["loss:sum"] + second.metrics["loss:sum"]
    assert math.isclose(loss, forward.metrics["loss:sum"], rel_tol=1e-4, abs_tol=1e-4), (loss_fn, loss, forward.metrics)
    logprobs = [o["logprobs"].tolist() for o in first.loss_fn_outputs + second.loss_fn_outputs]
    assert [len(l) for l in logprobs] == [len(r["tokens"]) for r in records]
    steps.append(
        {
            "loss_fn": loss_fn,
            "config": config or {},
            "losses": [first.metrics["loss:sum"], second.metrics["loss:sum"]],
            "forward_loss": forward.metrics["loss:sum"],
            "grad_norm": optim.metrics["grad_norm:mean"],
            "logprobs": logprobs,
        }
    )
    print(loss_fn, loss, optim.metrics, flush=True)

# Save and load state, with and without the optimizer.
check = [datum(r, "cross_entropy") for r in records]
before = training.forward(check, "cross_entropy").result().metrics["loss:sum"]
state_path = training.save_state("after-six").result().path
assert state_path.startswith("tinker://") and state_path.endswith("/weights/after-six"), state_path
training.forward_backward(check, "cross_entropy").result()
training.optim_step(types.AdamParams(learning_rate=5e-2)).result()
moved = training.forward(check, "cross_entropy").result().metrics["loss:sum"]
assert abs(moved - before) > 1e-3, (moved, before)
training.load_state_with_optimizer(state_path).result()
restored = training.forward(check, "cross_entropy").result().metrics["loss:sum"]
assert math.isclose(restored, before, rel_tol=1e-5, abs_tol=1e-5), (restored, before)
training.load_state(state_path).result()
assert math.isclose(
    training.forward(check, "cross_entropy").result().metrics["loss:sum"], before, rel_tol=1e-5, abs_tol=1e-5
)

# A new training client from the saved state computes the same.
resumed = service.create_training_client_from_state_with_optimizer(state_path).result()
resumed_loss = resumed.forward(check, "cross_entropy").result().metrics["loss:sum"]
assert math.isclose(resumed_loss, before, rel_tol=1e-5, abs_tol=1e-5), (resumed_loss, before)

# Save for a sampler and sample from it.
sampler_path = training.save_weights_for_sampler("trained").result().path
assert sampler_path.endswith("/sampler_weights/trained"), sampler_path
trained_sampler = service.create_sampling_client(model_path=sampler_path)
trained = trained_sampler.sample(types.ModelInput.from_ints(prompt), 2, params).result()
assert len(trained.sequences) == 2 and all(len(s.tokens) > 0 for s in trained.sequences)

# Checkpoints are listed and described.
rest = service.create_rest_client()
listed = rest.list_checkpoints(training.model_id).result()
ids = {c.checkpoint_id for c in listed.checkpoints}
assert {"weights/after-six", "sampler_weights/trained"} <= ids, ids
described = rest.get_weights_info_by_tinker_path(state_path).result()
assert described.base_model == model and described.lora_rank == RANK, described

# Hostile paths are refused.
for bad in ["tinker://../../etc/weights/x", f"tinker://{training.model_id}/weights/..", "/etc/passwd"]:
    try:
        training.load_state(bad).result()
    except Exception as e:  # the SDK raises its own error types
        assert "passwd" not in str(e) or "/etc/" not in str(e), e
    else:
        raise AssertionError(f"{bad} was accepted")

with open(out_path, "w") as f:
    json.dump({"seed": SEED, "rank": RANK, "records": records, "adam": adam.model_dump(), "steps": steps, "before": before}, f)

service.close("success").result()
print("OK")
