"""`pagedcore generate` on the default model (SmolLM2-135M-Instruct GGUF), on CPU."""

from pagedcore.cli import main


def test_generate_prints_the_completion(capsys):
    assert main(["generate", "What is the capital of France?", "--device", "cpu", "--max-tokens", "12",
                 "--max-model-len", "256"]) == 0
    captured = capsys.readouterr()
    assert "Paris" in captured.out
    assert "KV cache" in captured.err  # the memory plan is printed at start


def test_invalid_flag_value_is_one_clear_error(capsys):
    assert main(["generate", "hi", "--device", "cpu", "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_generate_with_tensor_parallel_ranks(capsys):
    # The default model's 9 query / 3 KV heads over 3 gloo ranks (found missing in an audit of
    # issue 17: the switch was tested on LLM(...), not through the command line).
    assert main(["generate", "What is the capital of France?", "--device", "cpu", "--max-tokens", "12",
                 "--max-model-len", "256", "--tensor-parallel-size", "3"]) == 0
    captured = capsys.readouterr()
    assert "Paris" in captured.out
    assert "in all:" in captured.err and "over 3 ranks" in captured.err  # the plan per rank and in all
