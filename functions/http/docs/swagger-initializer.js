// Swagger UI on this service's generated OpenAPI document. A file, not an inline script, so
// that the page's Content-Security-Policy can forbid inline scripts.
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    // BaseLayout: no top bar, whose field would load other documents into this page.
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    displayRequestDuration: true,
    // The bearer token given to "Authorize" lives in this page's memory only: it is neither
    // written to localStorage nor sent anywhere but with the requests "Try it out" makes.
    persistAuthorization: false,
    // No call to the public validator service.
    validatorUrl: null,
  });
});
