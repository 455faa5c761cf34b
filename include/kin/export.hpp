// Symbol visibility: kin is built with hidden visibility and exports only what is marked KIN_API.
#pragma once

#if defined(KIN_STATIC)
#define KIN_API
#elif defined(__GNUC__) || defined(__clang__)
#define KIN_API __attribute__((visibility("default")))
#else
#define KIN_API
#endif
