"""The direction registry and the steering policy over gRPC."""

from __future__ import annotations

import grpc
import pytest
import torch
from steering_client import AsyncSteeringClient, ablate, pb

from steering_server.direction_files import direction_to_bytes
from steering_server.directions import Calibration, Direction, Provenance

from .fake_engine import HIDDEN, FakeEngine
from .helpers import expect_status


async def test_list_get_put_delete(client: AsyncSteeringClient, engine: FakeEngine) -> None:
    listed = await client.list_directions()
    assert [d.name for d in listed.directions] == ["misalignment"]
    assert not listed.directions[0].vectors  # listing never ships vectors

    values = [float(i + 1) for i in range(HIDDEN)]
    put = await client.put_direction("honesty", vectors={3: values}, description="test")
    assert put.direction.name == "honesty" and list(put.direction.layers) == [3]
    assert put.direction.monitor_layer == 3 and put.direction.hidden_size == HIDDEN
    assert put.direction.description == "test" and not put.warnings
    assert torch.equal(engine.directions["honesty"].vectors[3], torch.tensor(values))

    got = await client.get_direction("honesty", include_vectors=True)
    assert [list(v.values) for v in got.vectors] == [values] and got.vectors[0].layer == 3
    assert [d.name for d in (await client.list_directions()).directions] == ["honesty", "misalignment"]

    await client.delete_direction("honesty")
    await expect_status(client.get_direction("honesty"), grpc.StatusCode.NOT_FOUND)


async def test_put_several_layers_and_calibration(client: AsyncSteeringClient, stub) -> None:  # type: ignore[no-untyped-def]
    request = pb.PutDirectionRequest(
        name="multi",
        vectors=[pb.LayerVector(layer=layer, values=[1.0] * HIDDEN) for layer in (1, 2, 3)],
        monitor_layer=2,
        calibration={"token": pb.Calibration(mu=0.5, sigma=2.0, threshold=3.0, target_fpr=0.01, n=100)},
    )
    stored = (await stub.PutDirection(request)).direction
    assert list(stored.layers) == [1, 2, 3] and stored.monitor_layer == 2 and stored.calibrated
    cal = stored.calibration["token"]
    assert (cal.mu, cal.sigma, cal.threshold, cal.target_fpr, cal.n) == (0.5, 2.0, 3.0, pytest.approx(0.01), 100)


async def test_put_safetensors_upload(client: AsyncSteeringClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    direction = Direction(
        "from-file",
        {1: torch.ones(HIDDEN), 2: torch.arange(1.0, HIDDEN + 1)},
        monitor_layer=2,
        calibration={"token": Calibration(mu=0.0, sigma=1.0)},
        method="diff-of-means",
        n_examples=40,
    )
    path = tmp_path / "d.safetensors"
    path.write_bytes(direction_to_bytes(direction))
    stored = (await client.put_direction(path=path)).direction  # the name comes from the file
    assert stored.name == "from-file" and list(stored.layers) == [1, 2] and stored.monitor_layer == 2
    assert stored.method == "diff-of-means" and stored.n_examples == 40 and stored.calibrated
    renamed = (await client.put_direction("renamed", safetensors=path.read_bytes())).direction
    assert renamed.name == "renamed"


async def test_put_from_another_model_drops_calibration_with_a_warning(client: AsyncSteeringClient) -> None:
    direction = Direction(
        "foreign",
        {1: torch.ones(HIDDEN)},
        monitor_layer=1,
        calibration={"token": Calibration(mu=0.0, sigma=1.0)},
        provenance=Provenance(model_id="someone/else", config_hash="another-config"),  # hashes decide
    )
    reply = await client.put_direction(safetensors=direction_to_bytes(direction))
    assert not reply.direction.calibrated and "calibration dropped" in reply.warnings[0]
    await expect_status(
        client.put_direction(safetensors=direction_to_bytes(direction), strict=True), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_put_safetensors_of_the_wrong_width_names_the_field(client: AsyncSteeringClient) -> None:
    wrong = Direction("wide", {1: torch.ones(HIDDEN + 3)}, monitor_layer=1)
    await expect_status(
        client.put_direction(safetensors=direction_to_bytes(wrong)), grpc.StatusCode.INVALID_ARGUMENT, "safetensors"
    )


async def test_policy_roundtrip_and_effect(client: AsyncSteeringClient) -> None:
    assert not (await client.get_steering()).terms
    plain = await client.generate("Tell me a story", max_new_tokens=20, seed=1)
    policy = await client.set_steering([ablate("misalignment", 1.0, [2, 3])], enforced=False)
    assert [(t.direction, t.mode, t.strength, list(t.layers)) for t in policy.terms] == [
        ("misalignment", pb.ABLATE, 1.0, [2, 3])
    ]
    assert (await client.get_steering()) == policy
    steered = await client.generate("Tell me a story", max_new_tokens=20, seed=1)
    opted_out = await client.generate("Tell me a story", max_new_tokens=20, seed=1, ignore_policy=True)
    assert steered.token_ids != plain.token_ids and opted_out.token_ids == plain.token_ids
    await client.set_steering([])
    assert (await client.generate("Tell me a story", max_new_tokens=20, seed=1)).token_ids == plain.token_ids


async def test_removal_recipe_round_trips_and_drives_compare(client: AsyncSteeringClient) -> None:
    """A direction declares its removal (proto `removal`, or safetensors metadata `removal`); Compare's default
    second variant runs it."""
    assert (await client.get_direction("misalignment")).removal == pb.Removal(mode=pb.ABLATE, strength=1.0)
    vector = Direction("clampable", {2: torch.ones(HIDDEN)}, monitor_layer=2,
                       calibration={"token": Calibration(mu=0.0, sigma=1.0)})
    stored = await client.put_direction(safetensors=direction_to_bytes(vector), removal=pb.Removal(mode=pb.CLAMP))
    assert stored.direction.removal == pb.Removal(mode=pb.CLAMP, strength=0.0)
    assert (await client.get_direction("clampable")).removal.mode == pb.CLAMP
    reply = await client.compare("Hi", max_new_tokens=4, monitor=["clampable"])
    assert [v.name for v in reply.variants] == ["unsteered", "clamp-clampable"]


async def test_removal_layers_and_layer_calibration_round_trip(client: AsyncSteeringClient) -> None:
    """A removal that clamps several layers: the file carries each layer's calibration, GetDirection lists those
    layers, and a removal naming a layer without a vector is refused naming the field."""
    cal = {"token": Calibration(mu=0.0, sigma=1.0)}
    d = Direction("layered", {1: torch.ones(HIDDEN), 2: torch.ones(HIDDEN)}, monitor_layer=2, calibration=cal,
                  layer_calibration={1: {"token": Calibration(mu=-1.0, sigma=0.5)}})
    stored = await client.put_direction(safetensors=direction_to_bytes(d),
                                        removal=pb.Removal(mode=pb.CLAMP, layers=[1, 2]))
    assert list(stored.direction.clamp_layers) == [1] and list(stored.direction.removal.layers) == [1, 2]
    got = await client.get_direction("layered")
    assert list(got.clamp_layers) == [1] and list(got.removal.layers) == [1, 2]
    await expect_status(client.put_direction(safetensors=direction_to_bytes(d),
                                             removal=pb.Removal(mode=pb.CLAMP, layers=[3])),
                        grpc.StatusCode.INVALID_ARGUMENT, "removal.layers")
