//! # kallista-engine
//!
//! Everything DataFusion/Ballista: Arrow <-> tensor conversion, the training,
//! evaluation and prediction operators, the gradient-reduce stage, the
//! scheduler and executor processes, the driver loop and checkpoints.
//!
//! Empty until the distributed-training issue: the layout is fixed by
//! `DESIGN.md`, and this crate takes no DataFusion dependency before it has
//! code that uses one (a cold DataFusion + Ballista build costs ~46 minutes on
//! the project's 2-core machines).
