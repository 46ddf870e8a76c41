#!/usr/bin/env bash
# stream.sh: the frame library's throughput for logits frames between two processes.
"$PHI3_BENCHBIN/stream_bench" 20000
