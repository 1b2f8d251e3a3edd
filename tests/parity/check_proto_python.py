#!/usr/bin/env python3
"""Wire compatibility of the generated Python API modules with the C++ ones (run by tests/unit/proto_api_test.cc).

usage: check_proto_python.py PYTHON_DIR WORK_DIR [--target HOST:PORT]

PYTHON_DIR holds the modules fm_proto_python generated (<build>/python). WORK_DIR holds what the C++ test wrote:
job.bin (ConversionJob), operation.bin and failed_operation.bin (google.longrunning.Operation), descriptors.bin
(FileDescriptorSet of the API). This script builds the same messages on its own, checks that the C++ bytes parse to
exactly them, that every message, enum and service has the same wire shape on both sides, and writes its own
serialisations to job_py.bin, operation_py.bin and failed_operation_py.bin for the C++ side to check. With --target it
also calls the C++ test server over gRPC (a unary call, a NOT_FOUND, a resumed server stream).

Exit status: 0 when everything matches, 1 on the first mismatch (explained on stderr), 2 on bad usage.
"""
import argparse
import os
import sys
import types

NUM_LAYERS = 28
CREATE_SECONDS = 1_800_000_000
JOB_NAME = "jobs/0f3a9c"


class Mismatch(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Mismatch(what)


def load_modules(python_dir):
    """Imports the generated modules from python_dir into this module's globals; v1 gathers flashmorph.v1's messages."""
    sys.path.insert(0, python_dir)
    global v1, grpc, operations_pb2, operations_pb2_grpc, code_pb2, error_details_pb2
    global descriptor_pb2, descriptor_pool, duration_pb2, message_factory, timestamp_pb2
    global conversion_service_pb2_grpc, worker_service_pb2_grpc
    import grpc
    from google.longrunning import operations_pb2, operations_pb2_grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory, timestamp_pb2
    from google.rpc import code_pb2, error_details_pb2
    from flashmorph.v1 import (artifact_pb2, conversion_job_pb2, conversion_service_pb2, conversion_service_pb2_grpc,
                               conversion_spec_pb2, job_event_pb2, layout_pb2, worker_service_pb2,
                               worker_service_pb2_grpc)
    v1 = types.SimpleNamespace()
    for module in (artifact_pb2, conversion_job_pb2, conversion_service_pb2, conversion_spec_pb2, job_event_pb2,
                   layout_pb2, worker_service_pb2):
        for name in module.DESCRIPTOR.message_types_by_name:
            setattr(v1, name, getattr(module, name))


# ---- The canonical messages (the same values as MakeJob() & co. in proto_api_test.cc) -----------------------------

def at(seconds, nanos=0):
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def scores():
    return [((l * 7919) % 101) / 100.0 for l in range(NUM_LAYERS)]


def make_layout(budget, k):
    s = scores()
    order = sorted(range(NUM_LAYERS), key=lambda l: -s[l])
    kept = sorted(order[:k])
    layout = v1.Layout(budget=budget, method=v1.ConversionSpec.FLASHMORPH)
    for l in range(NUM_LAYERS):
        layout.layer_types.append(v1.Layout.FULL_ATTENTION if l in kept else v1.Layout.LINEAR_ATTENTION)
        layout.scores.append(s[l])
    layout.full_attention_layer_indices.extend(kept)
    threshold = s[order[k - 1]]
    layout.cut_margin = threshold - s[order[k]]
    layout.near_tie_tolerance = 0.05
    layout.near_tie_indices.extend(l for l in range(NUM_LAYERS) if abs(s[l] - threshold) <= 0.05)
    return layout


def make_job():
    job = v1.ConversionJob(name=JOB_NAME, tenant="team-a")
    spec = job.spec
    spec.model.uri = "file:///models/qwen3-1.7b"
    spec.model.revision = "main"
    spec.model.source_sha256 = "a" * 64
    spec.budgets.add(full_attention_layers=7)
    spec.budgets.add(full_attention_ratio=0.125)
    spec.selection_method = v1.ConversionSpec.FLASHMORPH
    spec.branch_kind = v1.ConversionSpec.GATED_DELTANET
    spec.calibration.CopyFrom(v1.CalibrationSettings(train_tokens=5_000_000, learning_rate=1e-3,
                                                     sequence_length_tokens=2048, batch_sequences=8))
    spec.gates.CopyFrom(v1.GateSettings(train_tokens=20_000_000, learning_rate_start=2e-2, learning_rate_end=2e-3,
                                        sparsity_lambda=0.0, min_context_tokens=1024, max_context_tokens=16384,
                                        passkeys_per_sample=10, activation_checkpointing=False))
    spec.post_training.CopyFrom(v1.PostTrainingSettings(distill_tokens=0, long_context_tokens=100_000_000,
                                                        long_context_sequence_tokens=32768, learning_rate=1e-5,
                                                        trainable=v1.PostTrainingSettings.ALL))
    spec.evaluation.needle_context_tokens.extend([1024, 4096, 16384])
    spec.evaluation.needle_samples_per_length = 20
    spec.evaluation.held_out_tokens = 1_000_000
    spec.seed = 18_446_744_073_709_551_557
    spec.data.token_file.path = "/data/tokens.u32"
    spec.data.token_file.dtype = v1.DataSource.TokenFile.UINT32
    spec.output.dtype = v1.OutputOptions.BFLOAT16
    spec.output.max_shard_bytes = 5_000_000_000
    spec.priority = -5
    spec.labels["team"] = "research"
    spec.labels["model"] = "qwen3"
    spec.deadline.CopyFrom(at(CREATE_SECONDS + 86_400, 5))

    job.state = v1.ConversionJob.SUCCEEDED
    job.stage = v1.ConversionJob.EXPORT
    job.progress.CopyFrom(v1.Progress(step=1000, total_steps=1000, processed_tokens=20_000_000, loss=0.25,
                                      loss_terms={"hidden_mse": 0.2, "gate_sparsity": 0.05},
                                      tokens_per_second=22800.5,
                                      estimated_remaining=duration_pb2.Duration(seconds=0)))
    job.attempt = 2
    job.worker = "gpu-node-3"
    job.create_time.CopyFrom(at(CREATE_SECONDS))
    job.start_time.CopyFrom(at(CREATE_SECONDS + 60))
    job.end_time.CopyFrom(at(CREATE_SECONDS + 7200))
    job.update_time.CopyFrom(at(CREATE_SECONDS + 7200))
    job.request_id = "9b2d6c1e-5a4f-4e8b-9d0c-1f2e3a4b5c6d"

    result = job.result
    result.layouts.append(make_layout(spec.budgets[0], 7))
    result.layouts.append(make_layout(spec.budgets[1], 4))
    for length, teacher, hybrid in ((1024, 1.0, 0.95), (4096, 1.0, 0.9), (16384, 0.95, 0.8)):
        result.evaluation.needle_recall.add(context_tokens=length, samples=20, teacher_recall=teacher,
                                            hybrid_recall=hybrid)
    result.evaluation.held_out_tokens = 1_000_000
    result.evaluation.teacher_perplexity = 8.5
    result.evaluation.hybrid_perplexity = 9.125
    result.evaluation.kl_divergence = 0.042
    for stage in range(v1.ConversionJob.LOAD, v1.ConversionJob.EXPORT + 1):
        result.stage_timings.add(stage=stage, wall_time=duration_pb2.Duration(seconds=10 * stage),
                                 processed_tokens=1000 * stage, attempt=1 if stage <= v1.ConversionJob.GATES else 2)
    result.artifact_uri = "file:///var/lib/flashmorph/artifacts/jobs/0f3a9c"
    result.artifact_manifest_sha256 = "b" * 64
    result.artifact_size_bytes = 3_400_000_000
    result.source_sha256 = "a" * 64
    result.seed = spec.seed
    result.engine_version = "0.1.0"
    return job


def make_metadata():
    job = make_job()
    metadata = v1.ConversionMetadata(job=job.name, state=job.state, stage=job.stage, progress=job.progress,
                                     worker=job.worker, attempt=job.attempt, create_time=job.create_time,
                                     update_time=job.update_time)
    metadata.gates.step = 1000
    metadata.gates.layer_gates.extend(scores())
    return metadata


def make_operation():
    operation = operations_pb2.Operation(name="operations/0f3a9c", done=True)
    operation.metadata.Pack(make_metadata())
    operation.response.Pack(make_job())
    return operation


def make_failed_operation():
    operation = operations_pb2.Operation(name="operations/0f3a9d", done=True)
    operation.error.code = code_pb2.INVALID_ARGUMENT
    operation.error.message = "spec.budgets[0]: 40 full-attention layers but the model has 28"
    bad_request = error_details_pb2.BadRequest()
    bad_request.field_violations.add(field="spec.budgets[0].full_attention_layers", description="must be in [1, 27]")
    operation.error.details.add().Pack(bad_request)
    return operation


def make_events():
    def event(sequence, attempt):
        return v1.JobEvent(job=JOB_NAME, sequence=sequence, time=at(CREATE_SECONDS + sequence), attempt=attempt)

    events = [event(1, 0), event(2, 1), event(4, 1), event(7, 1), event(9, 1)]
    events[0].state_change.current = v1.ConversionJob.PENDING
    events[1].state_change.previous = v1.ConversionJob.PENDING
    events[1].state_change.current = v1.ConversionJob.RUNNING
    events[2].stage_change.current = v1.ConversionJob.LOAD
    events[3].gates.step = 10
    events[3].gates.layer_gates.extend([1.0, 0.5, 0.25])
    events[4].result.CopyFrom(make_job().result)
    return events


# ---- Comparison --------------------------------------------------------------------------------------------------

def unpack_any(any_message):
    message_type = descriptor_pool.Default().FindMessageTypeByName(any_message.TypeName())
    message = message_factory.GetMessageClass(message_type)()
    check(any_message.Unpack(message), f"cannot unpack Any of type {any_message.type_url}")
    return message


def expect_equal(expected, actual, what):
    """Field-by-field equality; Any fields are compared unpacked (their bytes may differ in map order)."""
    check(expected.DESCRIPTOR.full_name == actual.DESCRIPTOR.full_name, f"{what}: type differs")
    if expected.DESCRIPTOR.full_name == "google.protobuf.Any":
        check(expected.type_url == actual.type_url,
              f"{what}.type_url: {expected.type_url!r} != {actual.type_url!r}")
        expect_equal(unpack_any(expected), unpack_any(actual), f"{what}<{expected.TypeName()}>")
        return
    expected_fields = [field for field, _ in expected.ListFields()]
    actual_fields = [field for field, _ in actual.ListFields()]
    check([f.name for f in expected_fields] == [f.name for f in actual_fields],
          f"{what}: fields set differ: {[f.name for f in expected_fields]} != {[f.name for f in actual_fields]}")
    for field in expected_fields:
        e, a = getattr(expected, field.name), getattr(actual, field.name)
        path = f"{what}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            check(set(e.keys()) == set(a.keys()), f"{path}: keys {sorted(e.keys())} != {sorted(a.keys())}")
            for key in e:
                if field.message_type.fields_by_name["value"].message_type is not None:
                    expect_equal(e[key], a[key], f"{path}[{key!r}]")
                else:
                    check(e[key] == a[key], f"{path}[{key!r}]: {e[key]!r} != {a[key]!r}")
        elif is_repeated(field):
            check(len(e) == len(a), f"{path}: {len(e)} entries != {len(a)}")
            for i, (ei, ai) in enumerate(zip(e, a)):
                if field.message_type is not None:
                    expect_equal(ei, ai, f"{path}[{i}]")
                else:
                    check(ei == ai, f"{path}[{i}]: {ei!r} != {ai!r}")
        elif field.message_type is not None:
            expect_equal(e, a, path)
        else:
            check(e == a, f"{path}: {e!r} != {a!r}")


def is_repeated(field):
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def parse(path, message_class):
    with open(path, "rb") as f:
        message = message_class()
        message.ParseFromString(f.read())
    return message


def wire_shape(file_proto):
    """The parts of a FileDescriptorProto that decide the wire format and the RPC shapes."""
    def field(f):
        return (f.name, f.number, f.label, f.type, f.type_name, f.extendee,
                f.oneof_index if f.HasField("oneof_index") else None, f.proto3_optional, f.default_value)

    def enum(e):
        return (e.name, tuple((v.name, v.number) for v in e.value))

    def message(m):
        return (m.name, tuple(map(field, m.field)), tuple(map(field, m.extension)), tuple(map(message, m.nested_type)),
                tuple(map(enum, m.enum_type)), tuple(o.name for o in m.oneof_decl),
                tuple((r.start, r.end) for r in m.reserved_range), tuple(m.reserved_name), m.options.map_entry)

    def service(s):
        return (s.name, tuple((m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                              for m in s.method))

    return (file_proto.name, file_proto.package, tuple(file_proto.dependency),
            file_proto.syntax or "proto2", tuple(map(message, file_proto.message_type)),
            tuple(map(enum, file_proto.enum_type)), tuple(map(service, file_proto.service)),
            tuple(map(field, file_proto.extension)))


def check_descriptors(path):
    descriptor_set = parse(path, descriptor_pb2.FileDescriptorSet)
    compared = []
    for cc_file in descriptor_set.file:
        if cc_file.name.startswith("google/protobuf/"):
            continue  # well-known types: the protobuf runtimes' own copies, versions differ by design
        py_file = descriptor_pb2.FileDescriptorProto()
        descriptor_pool.Default().FindFileByName(cc_file.name).CopyToProto(py_file)
        cc_shape, py_shape = wire_shape(cc_file), wire_shape(py_file)
        if cc_shape != py_shape:
            for label, cc_part, py_part in zip(("name", "package", "deps", "syntax", "messages", "enums", "services",
                                                "extensions"), cc_shape, py_shape):
                check(cc_part == py_part, f"{cc_file.name}: {label} differ:\n  C++:    {cc_part}\n  Python: {py_part}")
        compared.append(cc_file.name)
    for required in ("flashmorph/v1/conversion_service.proto", "flashmorph/v1/worker_service.proto",
                     "google/longrunning/operations.proto", "google/rpc/status.proto"):
        check(required in compared, f"{path}: {required} missing from the C++ descriptor set")
    # The LRO annotation is readable from Python too.
    method = descriptor_pool.Default().FindMethodByName("flashmorph.v1.ConversionService.CreateConversionJob")
    info = method.GetOptions().Extensions[operations_pb2.operation_info]
    check((info.response_type, info.metadata_type) == ("flashmorph.v1.ConversionJob",
                                                       "flashmorph.v1.ConversionMetadata"),
          f"operation_info: {info}")
    return compared


def check_rpc(target):
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = conversion_service_pb2_grpc.ConversionServiceStub(channel)
        job = stub.GetConversionJob(v1.GetConversionJobRequest(name=JOB_NAME), timeout=10)
        expect_equal(make_job(), job, "GetConversionJob")
        try:
            stub.GetConversionJob(v1.GetConversionJobRequest(name="jobs/missing"), timeout=10)
            raise Mismatch("GetConversionJob(jobs/missing) succeeded")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.NOT_FOUND, f"GetConversionJob(jobs/missing): {error.code()}")
            check(error.details() == "no job jobs/missing", f"error message: {error.details()!r}")
        events = list(stub.WatchConversionJob(v1.WatchConversionJobRequest(name=JOB_NAME, after_sequence=2),
                                              timeout=10))
        expected = [e for e in make_events() if e.sequence > 2]
        check([e.sequence for e in events] == [e.sequence for e in expected],
              f"watch sequences {[e.sequence for e in events]}")
        for i, (e, a) in enumerate(zip(expected, events)):
            expect_equal(e, a, f"WatchConversionJob[{i}]")
    finally:
        channel.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("python_dir")
    parser.add_argument("work_dir")
    parser.add_argument("--target", help="host:port of the C++ test ConversionService")
    args = parser.parse_args()
    load_modules(args.python_dir)
    work = args.work_dir
    try:
        expect_equal(make_job(), parse(os.path.join(work, "job.bin"), v1.ConversionJob), "job")
        expect_equal(make_operation(), parse(os.path.join(work, "operation.bin"), operations_pb2.Operation),
                     "operation")
        expect_equal(make_failed_operation(),
                     parse(os.path.join(work, "failed_operation.bin"), operations_pb2.Operation), "failed_operation")
        compared = check_descriptors(os.path.join(work, "descriptors.bin"))
        # The generated service classes exist.
        for module, service in ((conversion_service_pb2_grpc, "ConversionService"),
                                (worker_service_pb2_grpc, "WorkerService"), (operations_pb2_grpc, "Operations")):
            for name in (f"{service}Stub", f"{service}Servicer", f"add_{service}Servicer_to_server"):
                check(hasattr(module, name), f"{module.__name__} lacks {name}")
        if args.target:
            check_rpc(args.target)
    except Mismatch as mismatch:
        print(f"check_proto_python: MISMATCH: {mismatch}", file=sys.stderr)
        return 1
    for name, message in (("job_py.bin", make_job()), ("operation_py.bin", make_operation()),
                          ("failed_operation_py.bin", make_failed_operation())):
        with open(os.path.join(work, name), "wb") as f:
            f.write(message.SerializeToString())
    print(f"check_proto_python: OK ({len(compared)} descriptor files compared"
          f"{', RPCs against ' + args.target if args.target else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
