//! Safe wrappers over the ABI callbacks for one filter instance (one HTTP stream).

use super::abi::*;

/// Envoy's side of one filter instance, valid for the current event hook.
#[derive(Clone, Copy)]
pub struct Host(pub FilterEnvoyPtr);

impl Host {
    pub fn header(&self, ty: HeaderType, name: &str) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::NULL;
        let ok = unsafe { envoy_dynamic_module_callback_http_get_header(self.0, ty, ModuleBuffer::of(name.as_bytes()), &mut out, 0, std::ptr::null_mut()) };
        if !ok || out.ptr.is_null() {
            return None;
        }
        Some(unsafe { out.as_slice() })
    }

    pub fn header_str(&self, ty: HeaderType, name: &str) -> Option<&str> {
        self.header(ty, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header of a map (pointers into Envoy's map; nothing is copied).
    pub fn headers(&self, ty: HeaderType) -> Vec<(&[u8], &[u8])> {
        let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, ty) };
        if n == 0 {
            return Vec::new();
        }
        let mut raw = vec![EnvoyHttpHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 }; n];
        if !unsafe { envoy_dynamic_module_callback_http_get_headers(self.0, ty, raw.as_mut_ptr()) } {
            return Vec::new();
        }
        raw.iter()
            .map(|h| unsafe {
                (
                    EnvoyBuffer { ptr: h.key_ptr, length: h.key_length }.as_slice(),
                    EnvoyBuffer { ptr: h.value_ptr, length: h.value_length }.as_slice(),
                )
            })
            .collect()
    }

    pub fn set_header(&self, ty: HeaderType, name: &str, value: Option<&str>) {
        let v = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
        unsafe {
            envoy_dynamic_module_callback_http_set_header(self.0, ty, ModuleBuffer::of(name.as_bytes()), v);
        }
    }

    pub fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.set_header(REQUEST_HEADER, name, value)
    }

    pub fn set_response_header(&self, name: &str, value: Option<&str>) {
        self.set_header(RESPONSE_HEADER, name, value)
    }

    pub fn send_response(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut hs: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() })
            .collect();
        unsafe {
            envoy_dynamic_module_callback_http_send_response(self.0, status as u32, hs.as_mut_ptr(), hs.len(), ModuleBuffer::of(body), ModuleBuffer::of(b"switchyard"));
        }
    }

    pub fn send_json(&self, status: u16, body: &[u8], extra: &[(&str, &str)]) {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.send_response(status, &headers, body);
    }

    fn chunks(&self, ty: BodyType, out: &mut Vec<u8>) {
        let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, ty) };
        if n == 0 {
            return;
        }
        let mut bufs = vec![EnvoyBuffer::NULL; n];
        if unsafe { envoy_dynamic_module_callback_http_get_body_chunks(self.0, ty, bufs.as_mut_ptr()) } {
            for b in &bufs {
                out.extend_from_slice(unsafe { b.as_slice() });
            }
        }
    }

    fn same_buffer(&self, request: bool) -> bool {
        unsafe {
            if request {
                envoy_dynamic_module_callback_http_received_buffered_request_body(self.0)
            } else {
                envoy_dynamic_module_callback_http_received_buffered_response_body(self.0)
            }
        }
    }

    /// The whole body so far: what earlier calls buffered, then what this call received.
    pub fn body(&self, request: bool) -> Vec<u8> {
        let (buffered, received) = if request { (BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY) } else { (BUFFERED_RESPONSE_BODY, RECEIVED_RESPONSE_BODY) };
        let mut out = Vec::new();
        if !self.same_buffer(request) {
            self.chunks(buffered, &mut out);
        }
        self.chunks(received, &mut out);
        out
    }

    /// Only what this call received (a stream chunk).
    pub fn received(&self, request: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.chunks(if request { RECEIVED_REQUEST_BODY } else { RECEIVED_RESPONSE_BODY }, &mut out);
        out
    }

    /// Replaces the whole body so far (buffered and received) with `body`.
    pub fn replace_body(&self, request: bool, body: &[u8]) {
        let (buffered, received) = if request { (BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY) } else { (BUFFERED_RESPONSE_BODY, RECEIVED_RESPONSE_BODY) };
        unsafe {
            if !self.same_buffer(request) {
                let n = envoy_dynamic_module_callback_http_get_body_size(self.0, buffered);
                if n > 0 {
                    envoy_dynamic_module_callback_http_drain_body(self.0, buffered, n);
                }
            }
            let n = envoy_dynamic_module_callback_http_get_body_size(self.0, received);
            if n > 0 {
                envoy_dynamic_module_callback_http_drain_body(self.0, received, n);
            }
            if !body.is_empty() {
                envoy_dynamic_module_callback_http_append_body(self.0, received, ModuleBuffer::of(body));
            }
        }
    }

    /// Replaces only what this call received (a stream chunk).
    pub fn replace_received(&self, request: bool, body: &[u8]) {
        let received = if request { RECEIVED_REQUEST_BODY } else { RECEIVED_RESPONSE_BODY };
        unsafe {
            let n = envoy_dynamic_module_callback_http_get_body_size(self.0, received);
            if n > 0 {
                envoy_dynamic_module_callback_http_drain_body(self.0, received, n);
            }
            if !body.is_empty() {
                envoy_dynamic_module_callback_http_append_body(self.0, received, ModuleBuffer::of(body));
            }
        }
    }

    pub fn host_metadata(&self, ns: &str, key: &str) -> Option<String> {
        let mut out = EnvoyBuffer::NULL;
        let ok = unsafe { envoy_dynamic_module_callback_http_get_metadata_string(self.0, METADATA_HOST, ModuleBuffer::of(ns.as_bytes()), ModuleBuffer::of(key.as_bytes()), &mut out) };
        if !ok {
            return None;
        }
        std::str::from_utf8(unsafe { out.as_slice() }).ok().filter(|s| !s.is_empty()).map(str::to_string)
    }

    pub fn set_filter_state(&self, key: &str, value: &[u8]) {
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(self.0, ModuleBuffer::of(key.as_bytes()), ModuleBuffer::of(value));
        }
    }

    pub fn clear_route_cache(&self) {
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    pub fn response_code_details(&self) -> String {
        let mut out = EnvoyBuffer::NULL;
        if unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, ATTRIBUTE_RESPONSE_CODE_DETAILS, &mut out) } {
            String::from_utf8_lossy(unsafe { out.as_slice() }).into_owned()
        } else {
            String::new()
        }
    }
}
