"""The assistant as a gateway in front of vLLM (its CPU build, serving SmolLM2): the loop trains a
LoRA candidate and deploys it to the engine before its experiment starts, a user of the candidate's
arm is answered by the engine through the gateway, and their feedback reaches ClickHouse under the
candidate's version. Then the faults: an adapter the engine refuses (no experiment, the reason on
training-status), an engine that is not there (503 naming its URL, nothing logged), and an engine
killed mid-answer (an error event, nothing logged, the other arm still served)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM

from analytics.clickhouse import open_warehouse
from assistant.answering import Assistant, PolicyPool
from assistant.routing import route
from assistant.service import build_app, create_app
from consumers.trainer.job import ensure_base_policy
from core.errors import EngineError
from core.serving_settings import GatewaySettings
from core.settings import FeedbackSettings
from demo.supervisor import Supervisor
from devtools.engine import LocalEngine
from devtools.kafka_local import free_port
from registry.deployment import ADAPTER_DIR, Deployer
from registry.store import Deployment, Manifest, ModelRegistry, version_for
from schemas import InteractionEvent, TrainingStatus, TrainTrigger
from schemas.experiments import Arm, ExperimentBook, ExperimentEvent, ExperimentStarted
from sdk.client import FeedbackClient
from tests.integration.analytics.conftest import SinkProcess
from tests.integration.assistant.test_openai_api import read
from tests.integration.conftest import smollm2_engine
from tests.integration.consumers.test_trainer import TopicTail, loop_environment, produce_feedback
from trainers.adapters import export_adapter
from trainers.base_models import SMOLLM2

pytestmark = pytest.mark.integration
POLICY = "assistant"


@pytest.fixture
def on_engine(settings, tmp_path, vllm_engine: LocalEngine):
    """The loop (stream app, trainer) training SmolLM2 under LoRA, deploying to the engine; no decider:
    the experiment stays open."""
    settings = settings.model_copy(
        update={
            "policy": settings.policy.updated(base_model=SMOLLM2),
            "gateway": GatewaySettings(engine_url=vllm_engine.url),
            "feedback": FeedbackSettings(collection_rate=1.0),
        }
    )
    env = loop_environment(
        settings,
        RLHF_POLICY__BASE_MODEL=SMOLLM2,
        RLHF_POLICY__TRAINING__LORA_R="8",
        # SmolLM2 on 2 cores: one pass over the corrections, one PPO iteration of short answers.
        RLHF_POLICY__TRAINING__DEMO_EPOCHS="1",
        RLHF_POLICY__TRAINING__EPOCHS="1",
        RLHF_POLICY__TRAINING__BATCH_SIZE="4",
        RLHF_POLICY__TRAINING__MAX_NEW_TOKENS="8",
        RLHF_POLICY__TRAINING__EVAL_SAMPLES_PER_QUERY="1",
        RLHF_POLICY__TRAINING__KL_BASE_BOUND="6",  # as the demo's SmolLM2 profile: corrections move it ~3.5 nats from base
        RLHF_GATEWAY__ENGINE_URL=vllm_engine.url,
        RLHF_AB_TESTING__HORIZON_S="86400",
    )
    ensure_base_policy(settings)
    services = Supervisor(tmp_path / "logs", env)
    services.start("streams", "streams", "worker")
    services.start("trainer", "trainer", "run", "--backoff", "1")
    yield settings, services
    services.stop_all()


def test_a_lora_candidate_trained_by_the_loop_is_served_by_the_engine_through_the_gateway(on_engine, vllm_engine):
    settings, services = on_engine
    registry = ModelRegistry.of(settings)
    experiments = TopicTail(settings, "experiments", ExperimentEvent)
    produce_feedback(settings, 100, seed=1)
    started = experiments.until(lambda e: len(e) >= 1, 900, services)[0].root
    candidate = started.treatment_version
    assert (registry.path("policies", candidate) / ADAPTER_DIR / "adapter_config.json").is_file()
    deployed = registry.deployments(POLICY)
    assert deployed[candidate] == Deployment(vllm_engine.url, candidate, adapter=True)
    assert deployed["base"] == Deployment(vllm_engine.url, SMOLLM2, adapter=False)
    models = {m["id"]: m.get("parent") for m in httpx.get(f"{vllm_engine.url}/v1/models").json()["data"]}
    assert models[candidate] == SMOLLM2

    user = next(
        u for u in (f"u-{n}" for n in range(200)) if route(u, "base", started, {"base", candidate}).model_version == candidate
    )
    with TestClient(create_app(settings, registry)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="open", http_client=http, max_retries=0)
        question: list[Any] = [{"role": "user", "content": "How do I reset my password in Mail?"}]
        chunks = list(
            client.chat.completions.create(
                model="assistant",
                messages=question,
                user=user,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage, extra = chunks[-1].usage, chunks[0].model_extra
        assert chunks[0].model == candidate and answer and usage is not None and usage.completion_tokens <= 12
        assert extra is not None
        token = extra["feedback_token"]
        receipt = http.post("/v1/feedback", json={"interaction_id": chunks[0].id, "type": "thumbs_up", "token": token})
        assert receipt.status_code == 200, receipt.text
    event = next(e for e in read(settings, "interactions", InteractionEvent, 1) if e.interaction_id == chunks[0].id)
    assert event.model_version == candidate and event.response == answer

    services.stop_all()  # the sink below needs the embedded database alone
    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        sink.wait_counts({"interactions": 1})
    finally:
        assert sink.stop() == 0, sink.output()
    warehouse = open_warehouse(settings)
    try:
        rows = warehouse.query_df(
            f"SELECT model_version, feedback_type FROM feedback FINAL WHERE interaction_id = '{chunks[0].id}'"
        ).to_dict("records")
    finally:
        warehouse.close()
    assert rows == [{"model_version": candidate, "feedback_type": "thumbs_up"}]


def publish_candidate(registry: ModelRegistry, version: str, rank: int) -> None:
    """A candidate whose adapter has `rank` (SmolLM2's first q_proj moved by a random rank-`rank` update)."""
    base = registry.path("policies", "base")

    def build(directory: Path) -> Manifest:
        lm = AutoModelForCausalLM.from_pretrained(base)
        weight = lm.model.layers[0].self_attn.q_proj.weight
        weight.data += 1e-3 * torch.randn(weight.shape[0], rank) @ torch.randn(rank, weight.shape[1])
        lm.save_pretrained(directory)
        export_adapter(base, directory, directory / ADAPTER_DIR)
        return Manifest(version=version, kind="policies", policy=POLICY, status="candidate", parent_version="base")

    registry.publish("policies", version, build)


def test_an_adapter_the_engine_refuses_starts_no_experiment_and_says_why(on_engine, vllm_engine):
    settings, services = on_engine
    registry = ModelRegistry.of(settings)
    trigger = TrainTrigger(policy=POLICY, model_version="base", ranges=(), event_ids=("e",))
    version = version_for(POLICY, trigger.trigger_id)
    publish_candidate(registry, version, rank=32)  # over the engine's --max-lora-rank 16
    statuses = TopicTail(settings, "training-status", TrainingStatus)
    with FeedbackClient.from_settings(settings) as client:  # re-delivered, as after a crash: the trainer starts its experiment
        client.send("train-triggers", trigger, key=POLICY)
    failed = statuses.until(lambda s: any(x.trigger_id == trigger.trigger_id and x.state == "failed" for x in s), 300, services)
    reason = next(x.message for x in failed if x.trigger_id == trigger.trigger_id and x.state == "failed")
    assert f"did not load adapter {version}" in reason and vllm_engine.url in reason
    assert registry.candidate(POLICY) is None and version not in registry.deployments(POLICY)
    assert not TopicTail(settings, "experiments", ExperimentEvent).until(lambda e: True, 5)


def test_an_engine_that_is_not_there_is_named_and_answers_503_with_nothing_logged(settings, micro_policy):
    url = f"http://127.0.0.1:{free_port()}"
    registry = ModelRegistry.of(settings)
    registry.register_base(POLICY, "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    with pytest.raises(EngineError, match=url):
        Deployer(registry, GatewaySettings(engine_url=url)).deploy(POLICY, "base")
    registry.record_deployment(POLICY, "base", Deployment(url, SMOLLM2, adapter=False))
    with TestClient(create_app(settings, registry)) as http:
        for stream in (False, True):
            reply = http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "user": "u-1", "stream": stream}
            )
            assert reply.status_code == 503 and reply.headers["retry-after"] == "5", reply.text
            assert url in reply.json()["error"]["message"]
    assert read(settings, "interactions", InteractionEvent, 1, timeout=3) == []


@pytest.fixture
def doomed_engine(tmp_path_factory: pytest.TempPathFactory):
    """A second engine, to be killed."""
    engine = smollm2_engine(tmp_path_factory.mktemp("doomed"), kv_cache_bytes=128 << 20)
    engine.up(timeout=600)
    try:
        yield engine
    finally:
        engine.down()


def test_an_engine_killed_mid_answer_logs_nothing_and_the_other_arm_is_still_served(settings, micro_policy, doomed_engine):
    registry = ModelRegistry.of(settings)
    registry.register_base(POLICY, "base", lambda d: shutil.copytree(micro_policy, d, dirs_exist_ok=True))
    registry.record_deployment(POLICY, "engine", Deployment(doomed_engine.url, SMOLLM2, adapter=False))
    experiment = ExperimentStarted(
        experiment_id="policy-ab:engine",
        policy=POLICY,
        trigger_id="t-engine",
        control_version="base",
        treatment_version="engine",
        arms=(Arm(name="control", model_version="base", weight=1.0), Arm(name="variant_a", model_version="engine", weight=1.0)),
        salt="s",
        horizon_users=1000,
        horizon_s=3600,
    )
    book = ExperimentBook()
    book.apply(experiment)
    pool = PolicyPool(registry, book)
    pool.refresh()
    users = {route(f"u-{n}", "base", experiment, {"base", "engine"}).model_version: f"u-{n}" for n in range(50)}
    assistant = Assistant(settings, pool, FeedbackClient.from_settings(settings))
    with TestClient(build_app(settings, assistant)) as http:
        body = {
            "messages": [{"role": "user", "content": "Write a long story about a cat."}],
            "user": users["engine"],
            "stream": True,
            "max_tokens": 200,
            "min_tokens": 200,
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            pieces = 0
            for line in lines:
                if '"content"' in line and '"content": ""' not in line:
                    pieces += 1
                    if pieces == 3:
                        doomed_engine.kill()
                if line.startswith('data: {"error"'):
                    break
            else:
                pytest.fail("the stream ended without an error event")
        other = http.post(
            "/v1/chat/completions", json={**body, "user": users["base"], "stream": False, "max_tokens": 8, "min_tokens": 1}
        )
        assert other.status_code == 200 and other.json()["model"] == "base"
        again = http.post("/v1/chat/completions", json={**body, "stream": False})
        assert again.status_code == 503 and "retry-after" in again.headers
    assistant.close()
    logged = read(settings, "interactions", InteractionEvent, 2, timeout=5)
    assert [e.model_version for e in logged] == ["base"]
