//! TEMPORARY local placeholder (not committed): the otp helper owns this module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OtpResult { pub message_id: String }
pub fn extract(p: &crate::message::ParsedMessage) -> OtpResult { OtpResult { message_id: p.message_id.clone() } }
