#ifndef DBRECOVERY_CCURLSHIM_H
#define DBRECOVERY_CCURLSHIM_H

#include <curl/curl.h>

/// Typed forms of libcurl's variadic calls (`curl_easy_setopt`, `curl_easy_getinfo`), which Swift
/// cannot call, and the one-time global set-up. Everything else of the easy interface is called from
/// Swift directly (BackupStorage's HTTPTransport).

/// `curl_global_init(CURL_GLOBAL_DEFAULT)`, and SIGPIPE ignored if it still has its default action:
/// with CURLOPT_NOSIGNAL libcurl no longer ignores it around its own writes, and a write to a
/// connection the server closed must be an error to retry, not the end of the process. Call once,
/// before any other thread uses libcurl.
CURLcode CCurlShim_global_init(void);

CURLcode CCurlShim_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode CCurlShim_setopt_offset(CURL *handle, CURLoption option, curl_off_t value);
/// Strings: libcurl copies them.
CURLcode CCurlShim_setopt_string(CURL *handle, CURLoption option, const char *value);
/// Header lists, buffers and callback data: libcurl keeps the pointer, which must outlive the transfer.
CURLcode CCurlShim_setopt_pointer(CURL *handle, CURLoption option, void *value);
/// CURLOPT_WRITEFUNCTION or CURLOPT_HEADERFUNCTION.
CURLcode CCurlShim_setopt_write_function(CURL *handle, CURLoption option, curl_write_callback function);
CURLcode CCurlShim_setopt_xferinfo_function(CURL *handle, curl_xferinfo_callback function);

/// The request body, sent from `bytes` without a copy (they must outlive the transfer); `length` 0
/// sends an empty body (`bytes` may then be NULL).
CURLcode CCurlShim_set_body(CURL *handle, const void *bytes, curl_off_t length);

CURLcode CCurlShim_getinfo_long(CURL *handle, CURLINFO info, long *value);

#endif
