"""gRPC server reflection, v1 and v1alpha, describing exactly what a port serves.

`enable_reflection` gives a server the reflection service under both names
clients ask for: `grpc.reflection.v1.ServerReflection`, the current one
(grpcurl and `buf curl` try it first), and `grpc.reflection.v1alpha`, the
older one. grpcio-reflection ships only v1alpha (grpc/grpc#38576). v1 is the
same protocol under a new package name, message for message and field
number for field number, so one servicer answers both: it is registered
under both service names with the v1alpha messages' (identical) wire
encoding, and the v1 descriptors, for a client that asks reflection about
reflection, are the v1alpha file with the package renamed. When
grpcio-reflection ships v1, this module shrinks to registering its two
servicers.

Each server describes its own services and nothing else: its descriptor
pool holds only the files of the services it serves (and their
dependencies), not the process-wide default pool. So where the AdminService
has a port of its own (admin.listen), the router's port neither lists it nor
describes it by symbol or file name, to callers that need no credential to
ask; the admin port's reflection does.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_METHOD = "ServerReflectionInfo"


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serves reflection v1 and v1alpha on `server`, describing `service_names`
    (fully qualified, from the generated code's descriptors) and itself."""
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    default = descriptor_pool.Default()
    files = [default.FindServiceByName(name).file for name in names if name != V1_SERVICE]
    pool = _pool_of(files, extra=_v1_file())
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    # One servicer under both names: the two versions' messages are the same on the wire.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(service, {_METHOD: handler})
            for service in (V1_SERVICE, V1ALPHA_SERVICE)
        )
    )


def _pool_of(
    files: Iterable[FileDescriptor], extra: descriptor_pb2.FileDescriptorProto
) -> descriptor_pool.DescriptorPool:
    """A pool of `files`, their dependencies (each before what imports it) and `extra`."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        added.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())

    for file in files:
        add(file)
    pool.AddSerializedFile(extra.SerializeToString())
    return pool


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """reflection.proto of grpc.reflection.v1: the v1alpha file, renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix, new_prefix = f".{proto.package}.", f".{V1_PACKAGE}."
    proto.name, proto.package = _V1_FILE, V1_PACKAGE
    proto.ClearField("options")  # v1alpha's say "deprecated" and name its Go and Java packages

    def renamed(type_name: str) -> str:
        if type_name.startswith(old_prefix):
            return new_prefix + type_name.removeprefix(old_prefix)
        return type_name

    messages = list(proto.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            if field.type_name:  # a message or enum field; scalars have none
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return proto
