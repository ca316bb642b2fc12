"""The one walker every ordering rule uses."""

import pytest
from conftest import model_from_text

from bnlint.errors import LoadError
from bnlint.walker import op_in, single_consumer, walk_down, walk_up

DIAMOND = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[1, 2, 4, 4] x) => (float[1, 2, 4, 4] y, float[1, 2, 4, 4] z)
<float[2, 2, 1, 1] w = {1.0, 0.0, 0.0, 1.0}, float[2] s = {1.0, 1.0}, float[2] b = {0.0, 0.0},
 float[2] m = {0.0, 0.0}, float[2] v = {1.0, 1.0}>
{
  [relu] r = Relu (x)
  [drop] d = Dropout (r)
  [left] l = Identity (d)
  [right] q = Sigmoid (d)
  [join] a = Add (l, q)
  [bn] y = BatchNormalization (a, s, b, m, v)
  [conv] c = Conv (d, w)
  [bn_after_conv] z = BatchNormalization (c, s, b, m, v)
}
"""


def graph():
    return model_from_text(DIAMOND).main


def test_walk_up_passes_transparent_ops_and_reports_the_chain():
    g = graph()
    path = walk_up(g, "l", op_in({"Identity", "Dropout"}))
    assert path.end.label == "relu"
    assert [n.label for n in path.via] == ["left", "drop"]
    assert path.describe_via() == " (through Identity 'left', Dropout 'drop')"


def test_walk_up_stops_at_the_first_opaque_producer_and_at_graph_inputs():
    g = graph()
    assert walk_up(g, "a", op_in({"Identity"})).end.label == "join"
    assert walk_up(g, "r", op_in({"Relu"})) is None  # walked through relu to the graph input x


def test_walk_down_reaches_each_target_once_and_stops_at_stop_ops():
    g = graph()
    paths = list(walk_down(g, "d", target=op_in({"BatchNormalization"}), stop=op_in({"Conv"})))
    assert [p.end.label for p in paths] == ["bn"]  # bn_after_conv is behind a Conv
    assert [n.label for n in paths[0].via] in (["left", "join"], ["right", "join"])
    unstopped = list(walk_down(g, "d", target=op_in({"BatchNormalization"}), stop=lambda n: False))
    assert sorted(p.end.label for p in unstopped) == ["bn", "bn_after_conv"]


def test_a_cyclic_graph_is_refused_before_any_walk():
    cyclic = model_from_text("""
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[2] x) => (float[2] y) { [a] p = Identity (q)  [b] q = Identity (p)  [c] y = Add (x, p) }""").main
    with pytest.raises(LoadError, match="cycle"):
        walk_up(cyclic, "p", op_in({"Identity"}))


def test_single_consumer():
    g = graph()
    assert single_consumer(g, "r").label == "drop"
    assert single_consumer(g, "d") is None  # three readers
    assert single_consumer(g, "y") is None  # a graph output
