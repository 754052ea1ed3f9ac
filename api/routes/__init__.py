"""The API's routes, one module per area. Routes validate input, check permissions and call
service methods; blocking service calls go through `asyncio.to_thread`."""
