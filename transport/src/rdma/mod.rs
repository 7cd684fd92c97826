//! NVMe/RDMA. So far only the verbs layer ([`verbs`]): the transport itself comes next.

pub mod verbs;
