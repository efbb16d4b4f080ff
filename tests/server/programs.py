"""Load a served program from a built model directory the way Triton's python backend does (`1/model.py` with
only its own folder's files beside it), with a stand-in for Triton's pb_utils; for the tests of server/models."""
import importlib.util
import json
import sys
import types


class DLTensor:
    """pb_utils.Tensor as the GPU program uses it: DLPack in and out (torch tensors)."""

    def __init__(self, name, t):
        self.name, self.t = name, t

    def to_dlpack(self):
        import torch

        return torch.utils.dlpack.to_dlpack(self.t)

    @classmethod
    def from_dlpack(cls, name, capsule):
        import torch

        return cls(name, torch.from_dlpack(capsule).clone())


class _In:
    def __init__(self, a):
        self.a = a

    def as_numpy(self):
        return self.a


def _pb_utils():
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, a):
            self.name, self.a = name, a

    class Response:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, Response, lambda msg: msg
    pb.TritonModelException = RuntimeError
    pb.get_input_tensor_by_name = lambda req, name: _In(req[name]) if name in req else None
    return pb


def load_program(model_dir, monkeypatch):
    """`model_dir/1/model.py` imported as Triton's python backend does, with only that folder's files beside it."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    for name in ("segformer_runtime", "segformer_batching"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("served_model", model_dir / "1" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert sys.modules["segformer_runtime"].__file__ == str(model_dir / "1" / "segformer_runtime.py")
    model = mod.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config_json(model_dir)), "model_repository": str(model_dir),
                      "model_version": "1"})
    return model


def config_json(model_dir):
    from google.protobuf import json_format

    from build.model_config import parse_pbtxt

    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    return json_format.MessageToDict(cfg, preserving_proto_field_name=True)


class ResponseSender:
    """What Triton's response sender records in the tests: each response with its flags, in order."""

    def __init__(self):
        self.sent = []

    def send(self, response, flags=0):
        self.sent.append((response, flags))


class DecoupledRequest(dict):
    """A request (input name -> tensor) with its own response sender, as the python backend hands it over."""

    def __init__(self, *a):
        super().__init__(*a)
        self.sender = ResponseSender()

    def get_response_sender(self):
        return self.sender
