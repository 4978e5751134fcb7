"""Prompt templates render exactly and are recorded for reproducibility."""

from types import SimpleNamespace

import pytest

from lib.prompts import get_prompt


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_boxed_uses_chat_template_and_asks_for_boxed():
    p = get_prompt("boxed")
    assert p.render("1+1?", FakeTokenizer()) == "<user>1+1?\nPlease reason step by step, and put your final answer within \\boxed{}.</user><assistant>"
    assert p.record(FakeTokenizer())["chat_template"] == "{{ messages }}"


def test_xwin_is_the_papers_raw_prompt():
    """Xwin-Math's Vicuna-style prompt, verbatim, without a chat template."""
    text = get_prompt("xwin").render("1+1?")
    assert text.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert "USER: 1+1? Give your solution in detail. In the end, write your final answer in the format of 'The answer is: <ANSWER>.'. ASSISTANT: " in text
    assert get_prompt("xwin").record()["stop"] == ["USER:"]


def test_unknown_prompt_lists_known():
    with pytest.raises(ValueError, match="known prompts: boxed, xwin"):
        get_prompt("boxd")


# ------------------------------------------------------------------------------- the BOS rule, base models

LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
               "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def prompt_ids_of_sft_eval_serve(tokenizer, prompt: str, question: str) -> dict[str, list[int]]:
    """The prompt's token ids as each path produces them: SFT (the masked prefix of a training example),
    evaluation (what VLLMSampler hands the engine) and Serve (the chat route with the export's recorded prompt:
    a raw prompt renders the bare question, a chat-template prompt takes the user message as sent, here the
    prompt's user text; and the completions route given the rendered text)."""
    from lib.sampling import SamplingSettings, VLLMSampler
    from lib.sft import IGNORE, tokenize_example
    from serve.model import ModelServer

    ex = tokenize_example(tokenizer, question, "It is 2. The answer is: 2", prompt)
    sft = ex.input_ids[:next(i for i, t in enumerate(ex.labels) if t != IGNORE)]

    class Engine:  # stands in for vllm.LLM: records what generate receives
        def generate(self, prompts, params, use_tqdm):
            self.prompts = prompts
            return [SimpleNamespace(outputs=[]) for _ in prompts]

    sampler = VLLMSampler.__new__(VLLMSampler)
    sampler.template, sampler.tokenizer, sampler.max_model_len = get_prompt(prompt), tokenizer, 4096
    sampler.settings, sampler.llm = SamplingSettings(), Engine()
    sampler({"question_id": ["q"], "dataset": ["d"], "kind": ["sampled"], "sample_indices": [[0]], "question": [question],
             "gold": ["2"]})
    server = SimpleNamespace(tokenizer=tokenizer, template=get_prompt(prompt))
    content = question if not get_prompt(prompt).use_chat_template else get_prompt(prompt).user_message(question)
    chat = ModelServer.func_or_class.prompt_ids(server, {"messages": [{"role": "user", "content": content}]})
    text = get_prompt(prompt).render(question, tokenizer)
    completion = ModelServer.func_or_class.prompt_ids(server, {"prompt": text})
    return {"sft": sft, "evaluate": sampler.llm.prompts[0]["prompt_token_ids"], "serve_chat": chat, "serve_completion": completion}


@pytest.mark.parametrize("prompt", ["xwin", "boxed"])
def test_one_bos_rule_gives_identical_prompt_ids_in_sft_evaluation_and_serve(tiny_base_model, prompt):
    """A tokenizer that adds BOS (LLaMA-like). xwin: no chat template, the ids start with exactly one BOS.
    boxed: a LLaMA-2 chat template that writes BOS itself, still exactly one BOS (not two). All four paths agree."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    if prompt == "boxed":
        tokenizer.chat_template = LLAMA2_CHAT
    bos = tokenizer.bos_token_id
    ids = prompt_ids_of_sft_eval_serve(tokenizer, prompt, "What is 1+1?")
    assert ids["sft"] == ids["evaluate"] == ids["serve_chat"] == ids["serve_completion"], ids
    assert ids["sft"][0] == bos and ids["sft"].count(bos) == 1
    text = get_prompt(prompt).render("What is 1+1?", tokenizer)
    body = tokenizer.encode(text, add_special_tokens=False)
    assert ids["sft"] == (body if prompt == "boxed" else [bos, *body])  # the template's BOS, or the rule's


def test_a_tokenizer_without_bos_gets_none(default_model):
    """SmolLM2 adds no BOS: the prompt ids are the text's tokens, identical in the three paths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    ids = prompt_ids_of_sft_eval_serve(tokenizer, "boxed", "What is 1+1?")
    assert ids["sft"] == ids["evaluate"] == ids["serve_chat"] == ids["serve_completion"]
    assert ids["sft"] == tokenizer.encode(get_prompt("boxed").render("What is 1+1?", tokenizer), add_special_tokens=False)


def test_chat_prompt_is_refused_for_a_tokenizer_without_chat_template(tiny_base_model):
    """Naming the key, the model and the prompts that work; xwin passes."""
    from transformers import AutoTokenizer

    from lib.prompts import check_prompt_for_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    with pytest.raises(ValueError, match=r"^prompt: 'boxed' applies the model's chat template, but .*tiny-llama-base's "
                                         r"tokenizer has none \(a base model\?\); use a prompt without one: xwin$"):
        check_prompt_for_tokenizer("boxed", tokenizer, tiny_base_model)
    check_prompt_for_tokenizer("xwin", tokenizer, tiny_base_model)


def test_recorded_raw_prompt_drives_the_chat_route(tiny_base_model, tmp_path):
    """An export that recorded xwin: a single user message is rendered through xwin (the ids SFT trained
    on); anything but one user message is refused with a message for a 400."""
    from transformers import AutoTokenizer

    from lib.prompts import chat_prompt_ids, load_model_prompt, save_model_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    assert load_model_prompt(tmp_path) is None
    save_model_prompt(tmp_path, get_prompt("xwin"), tokenizer)
    template = load_model_prompt(tmp_path)
    assert template == get_prompt("xwin")
    ids = chat_prompt_ids([{"role": "user", "content": "What is 1+1?"}], tokenizer, template)
    assert ids == get_prompt("xwin").token_ids("What is 1+1?", tokenizer)
    with pytest.raises(ValueError, match="single-turn prompt 'xwin': send exactly one message, with role 'user'"):
        chat_prompt_ids([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], tokenizer, template)
    with pytest.raises(ValueError, match="has no chat template and no recorded prompt; use /v1/completions"):
        chat_prompt_ids([{"role": "user", "content": "y"}], tokenizer, None)


def test_serve_adds_the_recorded_raw_prompts_stop_strings_to_chat_only(tiny_base_model):
    """xwin's "USER:" ends a chat completion (the model would otherwise write the next turn); completions
    keep exactly the request's stop strings; a model without a recorded prompt adds nothing."""
    from serve.model import ModelServer

    stop_strings = ModelServer.func_or_class.stop_strings
    server = SimpleNamespace(template=get_prompt("xwin"))
    chat = {"messages": [{"role": "user", "content": "q"}]}
    assert stop_strings(server, {**chat, "stop": "END"}) == ["END", "USER:"]
    assert stop_strings(server, {**chat, "stop": ["USER:"]}) == ["USER:"]
    assert stop_strings(server, {"prompt": "q", "stop": None}) is None
    assert stop_strings(SimpleNamespace(template=None), {**chat, "stop": ["END"]}) == ["END"]
