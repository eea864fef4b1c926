#!/usr/bin/env python3
"""W3 of shared/peers/WORKLOAD.md in PyTorch on a GPU, the peer of
ops/benches/w3.rs: frozen InceptionV3 (torchvision, no top, average pooling,
in inference mode) over [B, T=4, 3, 150, 150] frames -> LSTM(256); question
Embedding(10000, 256) -> LSTM(128); concatenate -> Dense(128, relu) ->
Dense(1000); Adam(1e-3, eps=1e-7). Train samples/s at B = 8, inference at
B = 32, each the median of 10 steps after 5 warm-up steps, timed with the
device synchronised; one JSON line in the peers' format."""
import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_w1 import timed  # beside this file, here and in gpu-check/

FRAMES, SIDE, QUESTION_LEN, VOCAB, ANSWERS = 4, 150, 20, 10000, 1000


def frozen_cnn():
    import torchvision
    cnn = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    cnn.fc = nn.Identity()
    cnn.eval()
    for p in cnn.parameters():
        p.requires_grad_(False)
    return cnn


class W3(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = frozen_cnn()
        self.video = nn.LSTM(2048, 256, batch_first=True)
        self.embed = nn.Embedding(VOCAB, 256)
        self.question = nn.LSTM(256, 128, batch_first=True)
        self.hidden = nn.Linear(256 + 128, 128)
        self.answer = nn.Linear(128, ANSWERS)

    def forward(self, video, question):
        b = video.shape[0]
        with torch.no_grad():
            self.cnn.eval()
            features = self.cnn(video.flatten(0, 1)).view(b, FRAMES, 2048)
        _, (video_state, _) = self.video(features)
        _, (question_state, _) = self.question(self.embed(question))
        joined = torch.cat([video_state[-1], question_state[-1]], dim=1)
        return self.answer(F.relu(self.hidden(joined)))


def batch(size, device, generator):
    video = torch.randn(size, FRAMES, 3, SIDE, SIDE, generator=generator).to(device)
    question = torch.randint(1, VOCAB, (size, QUESTION_LEN), generator=generator).to(device)
    answer = torch.randint(0, ANSWERS, (size,), generator=generator).to(device)
    return video, question, answer


def main():
    try:
        model = W3().to("cuda:0")
    except ImportError as e:
        print(json.dumps({"peer": "torch-cuda", "workload": "W3", "error": f"torchvision is missing: {e}"}))
        return 1
    device = torch.device("cuda:0")
    generator = torch.Generator().manual_seed(1234)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3, eps=1e-7)
    train = [batch(8, device, generator) for _ in range(2)]
    step_index = [0]

    def train_step():
        video, question, answer = train[step_index[0] % len(train)]
        step_index[0] += 1
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(video, question), answer)
        loss.backward()
        optimizer.step()

    infer_video, infer_question, _ = batch(32, device, generator)

    def infer_step():
        with torch.no_grad():
            model(infer_video, infer_question)

    step_s = timed(train_step, 10)
    infer_s = timed(infer_step, 10)
    print(json.dumps({
        "peer": "torch-cuda", "workload": "W3", "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "train_samples_per_s": round(8 / step_s, 2), "infer_samples_per_s": round(32 / infer_s, 2),
        "step_ms_median": round(step_s * 1e3, 3), "infer_ms_median": round(infer_s * 1e3, 3),
    }))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
