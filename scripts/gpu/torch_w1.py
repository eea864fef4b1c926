#!/usr/bin/env python3
"""W1 of shared/peers/WORKLOAD.md in PyTorch on a GPU, the peer that
scripts/gpu-check.sh sets beside Kallista's CUDA backend: train samples/s at
batch 32 (forward, backward, Adam(1e-3, eps=1e-7)), inference samples/s at
batch 256, each the median of 20 steps after 5 warm-up steps, timed with the
device synchronised; prints one JSON line in the peers' format."""
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

FRAMES, FEATURES, QUESTION_LEN, VOCAB, ANSWERS = 16, 2048, 20, 10000, 1000


class W1(nn.Module):
    def __init__(self):
        super().__init__()
        self.video = nn.LSTM(FEATURES, 256, batch_first=True)
        self.embed = nn.Embedding(VOCAB, 256)
        self.question = nn.LSTM(256, 128, batch_first=True)
        self.hidden = nn.Linear(256 + 128, 128)
        self.answer = nn.Linear(128, ANSWERS)

    def forward(self, video, question):
        _, (video_state, _) = self.video(video)
        _, (question_state, _) = self.question(self.embed(question))
        joined = torch.cat([video_state[-1], question_state[-1]], dim=1)
        return self.answer(F.relu(self.hidden(joined)))


def batch(size, device, generator):
    video = torch.randn(size, FRAMES, FEATURES, generator=generator).to(device)
    question = torch.randint(1, VOCAB, (size, QUESTION_LEN), generator=generator).to(device)
    answer = torch.randint(0, ANSWERS, (size,), generator=generator).to(device)
    return video, question, answer


def timed(step, count, warmup=5):
    times = []
    for i in range(warmup + count):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    device = torch.device("cuda:0")
    generator = torch.Generator().manual_seed(1234)
    model = W1().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    train = [batch(32, device, generator) for _ in range(4)]
    step_index = [0]

    def train_step():
        video, question, answer = train[step_index[0] % len(train)]
        step_index[0] += 1
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(video, question), answer)
        loss.backward()
        optimizer.step()

    infer_video, infer_question, _ = batch(256, device, generator)

    def infer_step():
        with torch.no_grad():
            model(infer_video, infer_question)

    step_s = timed(train_step, 20)
    infer_s = timed(infer_step, 20)
    print(json.dumps({
        "peer": "torch-cuda", "workload": "W1", "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "train_samples_per_s": round(32 / step_s, 2), "infer_samples_per_s": round(256 / infer_s, 2),
        "step_ms_median": round(step_s * 1e3, 3), "infer_ms_median": round(infer_s * 1e3, 3),
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
