"""The README's opening commands and its rule table stay true."""

from conftest import REPO

from bnlint.ruledocs import all_rule_docs

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_two_commands():
    blocks = README.split("```bash\n")[1:3]
    commands = [b.split("\n```")[0].strip() for b in blocks]
    assert len(commands) == 2
    assert "bnlint check fixtures/example/small_cnn.onnx" in commands[0]
    assert (REPO / "fixtures/example/small_cnn.onnx").is_file()
    assert "pip install torch==2.13.0" in commands[1] and commands[1].endswith("python -m pytest -q")
    ci = (REPO / ".ci/run").read_text()
    assert "python -m pytest -q" in ci and ci.index("torch==2.13.0") < ci.index('-e ".[test,torch]"')


def test_rule_table_matches_rule_files():
    for doc in all_rule_docs().values():
        row = next((line for line in README.splitlines()
                    if line.startswith(f'| <a id="{doc.id.lower()}"></a>{doc.id} |')), None)
        assert row is not None, f"{doc.id} missing from the README rule table"
        assert f"`{doc.slug}`" in row and doc.title in row and doc.severity.value in row
