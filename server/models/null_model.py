"""A python-backend model that does nothing: returns all-zero labels of the right shape at once.

Served as `segformer_null` to measure the load generator's and the server's own ceiling (what a request costs
with no model behind it), next to the real models' numbers.
"""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for r in requests:
            images = pb_utils.get_input_tensor_by_name(r, "images").as_numpy()
            labels = np.zeros(images.shape[:3], np.uint8)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("labels", labels)]))
        return responses
