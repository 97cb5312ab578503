//! Kokoa wire types: the protobuf messages and gRPC services shared by control, edge and
//! origin. Filled by the control-plane issue; empty until then.
