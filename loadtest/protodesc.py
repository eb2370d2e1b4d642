"""Finding the called method: a .proto compiled at run time, a protoset, or server
reflection (ghz's order of precedence).

    fds = await descriptor_set(cfg)          # serialized FileDescriptorSet (picklable)
    method = find_method(fds, cfg["call"])   # a MethodDescriptor, with message classes
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha import reflection_pb2

from clawmesh.loadtest.config import ConfigError, import_paths

_REFLECTION_PATHS = ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                     "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")


def split_call(call: str) -> tuple[str, str]:
    """``pkg.Service.Method`` / ``pkg.Service/Method`` / leading dot -> (service, method)."""
    name = call.lstrip(".").replace("/", ".")
    service, _, method = name.rpartition(".")
    if not service or not method:
        raise ConfigError(f"call: invalid method name {call!r}; expected pkg.Service.Method")
    return service, method


def compile_proto(proto: str, paths: list[str]) -> bytes:
    """Run grpc_tools.protoc to get a FileDescriptorSet with all imports."""
    from grpc_tools import protoc

    if not proto.endswith(".proto"):
        raise ConfigError(f"proto: {proto!r} must end in .proto")
    if not Path(proto).exists():
        raise ConfigError(f"proto: {proto}: no such file")
    well_known = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        args = ["protoc", *[f"-I{p}" for p in paths], f"-I{well_known}",
                f"--descriptor_set_out={out}", "--include_imports", proto]
        if protoc.main(args) != 0:
            raise ConfigError(f"proto: protoc could not compile {proto} with import paths "
                              f"{paths} (errors above)")
        return Path(out).read_bytes()


async def reflect(channel: grpc.aio.Channel, service: str, metadata: list | None = None,
                  deadline_s: float | None = None) -> bytes:
    """Fetch the file declaring ``service`` and its dependencies by server reflection
    (v1, falling back to v1alpha)."""
    last: Exception | None = None
    for path in _REFLECTION_PATHS:
        stream = channel.stream_stream(
            path, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        call = stream(metadata=metadata, timeout=deadline_s)
        try:
            files = await _fetch(call, service)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # v1 not served: UNIMPLEMENTED, or INTERNAL when our write races that answer.
            last = exc
            if path != _REFLECTION_PATHS[-1]:
                continue
            code = await call.code()
            raise ConfigError(f"reflection: {code.name}: {await call.details()}") from None
        finally:
            call.cancel()
        return _ordered_set(files)
    raise ConfigError(f"reflection: server does not support reflection ({last})")


async def _fetch(call, service: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    pending: list[reflection_pb2.ServerReflectionRequest] = [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)]
    asked: set[str] = set()
    while pending:
        await call.write(pending.pop())
        resp = await call.read()
        if resp is grpc.aio.EOF:
            break
        if resp.HasField("error_response"):
            err = resp.error_response
            raise ConfigError(f"reflection: {service}: {err.error_message} (code {err.error_code})")
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[fdp.name] = fdp
        for fdp in list(files.values()):
            for dep in fdp.dependency:
                if dep not in files and dep not in asked:
                    asked.add(dep)
                    pending.append(reflection_pb2.ServerReflectionRequest(file_by_filename=dep))
    await call.done_writing()
    return files


def _ordered_set(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> bytes:
    out = descriptor_pb2.FileDescriptorSet()
    done: set[str] = set()

    def add(name: str) -> None:
        if name in done or name not in files:
            return
        done.add(name)
        for dep in files[name].dependency:
            add(dep)
        out.file.append(files[name])

    for name in files:
        add(name)
    return out.SerializeToString()


def find_method(fds: bytes, call: str) -> MethodDescriptor:
    """The method in a serialized FileDescriptorSet (message classes via ``message_class``)."""
    service, method = split_call(call)
    pool = descriptor_pool.DescriptorPool()
    for fdp in descriptor_pb2.FileDescriptorSet.FromString(fds).file:
        try:
            pool.Add(fdp)
        except TypeError:  # already there (e.g. a well-known type)
            pass
    try:
        svc = pool.FindServiceByName(service)
    except KeyError:
        raise ConfigError(f"call: service {service!r} not found") from None
    found = svc.methods_by_name.get(method)
    if found is None:
        raise ConfigError(f"call: service {service!r} does not include a method named "
                          f"{method!r}")
    return found


def message_class(desc):
    return message_factory.GetMessageClass(desc)


def local_descriptors(cfg: dict) -> bytes | None:
    """From ``proto`` (compiled now) or ``protoset``; None means use reflection."""
    if cfg["proto"]:
        return compile_proto(cfg["proto"], import_paths(cfg))
    if cfg["protoset"]:
        try:
            return Path(cfg["protoset"]).read_bytes()
        except OSError as exc:
            raise ConfigError(f"protoset: {exc}") from None
    return None


async def descriptor_set(cfg: dict, channel_factory=None) -> bytes:
    """ghz's lookup order: proto, else protoset, else reflection (on a temporary channel)."""
    local = local_descriptors(cfg)
    if local is not None:
        return local
    service, _ = split_call(cfg["call"])
    channel = channel_factory()
    try:
        meta = [(k.lower(), v) for k, v in (cfg["reflect-metadata"] or {}).items()]
        return await reflect(channel, service, meta or None, cfg["connect-timeout"] / 1e9 or None)
    finally:
        await channel.close()
