# kvault::http: the event-driven HTTP/1.1 server of `kvault serve` and kvaultd's observability
# endpoint (included from the top CMakeLists.txt after kvault_store). Boost.Beast and Boost.Asio
# are header-only (Debian libboost-dev); only src/http/http_server.cc includes them.
find_package(Boost 1.74 REQUIRED)

add_library(kvault_http STATIC src/http/http_server.cc)
target_include_directories(kvault_http PUBLIC include src)
target_compile_definitions(kvault_http PRIVATE BOOST_ASIO_NO_DEPRECATED BOOST_BEAST_USE_STD_STRING_VIEW)
target_link_libraries(kvault_http PUBLIC kvault_store Threads::Threads PRIVATE Boost::headers)
