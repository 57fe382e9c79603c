"""The committed stubs match the protos, and the KServe proto keeps the Open Inference Protocol's wire contract."""

from __future__ import annotations

from pathlib import Path

from slimyolo.rpc import protogen
from slimyolo.rpc.gen.kserve import grpc_predict_v2_pb2 as kserve
from slimyolo.rpc.gen.v1 import common_pb2, converter_pb2, inference_pb2, jobs_pb2, pruner_pb2, trainer_pb2


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_committed_stubs_are_up_to_date(tmp_path):
    protogen.generate(tmp_path / "gen")
    fresh, committed = _tree(tmp_path / "gen"), _tree(protogen.GEN_DIR)
    assert sorted(fresh) == sorted(committed), "stub files differ from protos/: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make protos`"


def test_stubs_import_as_a_package():
    assert common_pb2.Job.__module__ == "slimyolo.rpc.gen.v1.common_pb2"
    assert jobs_pb2.GetJobResponse().job.DESCRIPTOR is common_pb2.Job.DESCRIPTOR
    job = common_pb2.Job(id="j1", state=common_pb2.JOB_STATE_RUNNING)
    assert common_pb2.Job.FromString(job.SerializeToString()) == job


def _methods(module, service: str) -> dict[str, tuple[str, str, bool, bool]]:
    svc = module.DESCRIPTOR.services_by_name[service]
    return {m.name: (m.input_type.name, m.output_type.name, m.client_streaming, m.server_streaming)
            for m in svc.methods}


def test_slimyolo_services_have_one_request_response_pair_per_rpc():
    services = {
        (trainer_pb2, "Trainer"): {"StartTraining", "StartEvaluation"},
        (pruner_pb2, "Pruner"): {"StartPrune", "StartSweep"},
        (converter_pb2, "Converter"): {"StartConversion"},
        (inference_pb2, "Inference"): {"Detect", "DetectStream", "LoadModel", "UnloadModel", "ListModels",
                                      "BenchmarkModel"},
        (jobs_pb2, "Jobs"): {"GetJob", "WatchJob", "CancelJob", "ListJobs"},
    }
    seen: set[str] = set()
    for (module, name), rpcs in services.items():
        methods = _methods(module, name)
        assert set(methods) == rpcs
        assert module.DESCRIPTOR.services_by_name[name].full_name == f"slimyolo.v1.{name}"
        for rpc, (req, resp, _, _) in methods.items():
            assert (req, resp) == (f"{rpc}Request", f"{rpc}Response")
            assert req not in seen and resp not in seen
            seen |= {req, resp}
    assert _methods(jobs_pb2, "Jobs")["WatchJob"][2:] == (False, True)
    assert _methods(inference_pb2, "Inference")["DetectStream"][2:] == (True, True)
    for module, name in [(trainer_pb2, "Trainer"), (pruner_pb2, "Pruner"), (converter_pb2, "Converter")]:
        assert all(resp.endswith("Response") for _, resp, _, _ in _methods(module, name).values())
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            assert method.output_type.fields_by_name["job"].message_type.full_name == "slimyolo.v1.Job"


def test_kserve_v2_wire_contract():
    """Method paths, message names and field numbers of the Open Inference Protocol (gRPC).

    Standard clients address methods as /inference.GRPCInferenceService/<Method> and encode
    fields by number, so these must never change.
    """
    svc = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert svc.full_name == "inference.GRPCInferenceService"
    assert {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods} == {
        name: (f"inference.{name}Request", f"inference.{name}Response")
        for name in ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]}

    def fields(message) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}

    assert fields(kserve.ModelInferRequest) == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                                                "inputs": 5, "outputs": 6, "raw_input_contents": 7}
    assert fields(kserve.ModelInferRequest.InferInputTensor) == {"name": 1, "datatype": 2, "shape": 3,
                                                                 "parameters": 4, "contents": 5}
    assert fields(kserve.ModelInferRequest.InferRequestedOutputTensor) == {"name": 1, "parameters": 2}
    assert fields(kserve.ModelInferResponse) == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
                                                 "outputs": 5, "raw_output_contents": 6}
    assert fields(kserve.ModelInferResponse.InferOutputTensor) == {"name": 1, "datatype": 2, "shape": 3,
                                                                   "parameters": 4, "contents": 5}
    assert fields(kserve.InferParameter) == {"bool_param": 1, "int64_param": 2, "string_param": 3,
                                             "double_param": 4, "uint64_param": 5}
    assert fields(kserve.InferTensorContents) == {
        "bool_contents": 1, "int_contents": 2, "int64_contents": 3, "uint_contents": 4, "uint64_contents": 5,
        "fp32_contents": 6, "fp64_contents": 7, "bytes_contents": 8}
    assert fields(kserve.ModelMetadataResponse) == {"name": 1, "versions": 2, "platform": 3, "inputs": 4,
                                                    "outputs": 5}
    assert fields(kserve.ModelMetadataResponse.TensorMetadata) == {"name": 1, "datatype": 2, "shape": 3}
    assert fields(kserve.ServerMetadataResponse) == {"name": 1, "version": 2, "extensions": 3}
    assert fields(kserve.ModelReadyRequest) == fields(kserve.ModelMetadataRequest) == {"name": 1, "version": 2}
    assert fields(kserve.ServerLiveResponse) == {"live": 1}
    assert fields(kserve.ServerReadyResponse) == {"ready": 1}
    assert fields(kserve.ModelReadyResponse) == {"ready": 1}
    raw = kserve.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"]
    assert raw.type == raw.TYPE_BYTES and raw.is_repeated


def test_a_proto_change_makes_the_committed_stubs_stale(tmp_path):
    """The freshness check above compares content, so an edited proto is caught."""
    import shutil

    root = tmp_path / "protos"
    shutil.copytree(protogen.PROTO_ROOT, root)
    jobs = root / "slimyolo/v1/jobs.proto"
    edited = jobs.read_text().replace("message ListJobsRequest {}", "message ListJobsRequest {\n  int32 limit = 1;\n}")
    jobs.write_text(edited)
    protogen.generate(tmp_path / "gen", root)
    fresh, committed = _tree(tmp_path / "gen"), _tree(protogen.GEN_DIR)
    assert [n for n in fresh if fresh[n] != committed[n]] == ["v1/jobs_pb2.py", "v1/jobs_pb2.pyi"]
