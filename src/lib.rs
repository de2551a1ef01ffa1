pub mod engine;
pub mod fixtures;
pub mod input;
pub mod model;
