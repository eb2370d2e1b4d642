"""The in-process bound answers like the mesh: handlers called directly, memory kept."""

from clawmesh.common.v1 import common_pb2
from clawmesh.launcher.inprocess import direct_mesh


async def test_direct_mesh_answers_with_the_sessions_memory(settings):
    async with direct_mesh(settings) as mesh:
        for text in ("first", "second"):
            reply = await mesh.submit(common_pb2.InboundMessage(
                channel="c", sender="u", session_id="s", content=text))
    assert isinstance(reply, common_pb2.Reply)
    assert reply.content == 'mock reply 2: you said "second"; 1 earlier turn(s), previously "first"'
